"""Persistence: one state database (``db``) holding the privacy ledger (analysts,
charges, admission by the privacy filter, answers, audit), idempotency keys, API
keys (hashed) and the model registry's table."""
