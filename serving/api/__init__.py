"""The HTTP API (FastAPI). Routes validate, call a service function and return."""
