"""The HTTP API (FastAPI): routes, schemas, auth, and one translation of domain errors to problem+json."""
