"""Webhooks: Standard Webhooks signing, delivery state, the SSRF guard."""
