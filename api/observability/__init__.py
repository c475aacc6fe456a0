"""The API's operations wiring: request metrics and /metrics rendering."""
