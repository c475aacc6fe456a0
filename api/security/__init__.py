"""The API's security: API keys, rate limiting, body checks."""
