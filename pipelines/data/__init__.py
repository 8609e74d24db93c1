"""Data: the canonical schema, source adapters (ingest), the generator, Great Expectations validation and splits."""
