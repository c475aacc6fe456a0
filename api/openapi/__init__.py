"""The OpenAPI document: per-model schemas and truthful error responses."""
