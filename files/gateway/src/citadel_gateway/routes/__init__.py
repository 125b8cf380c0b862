"""FastAPI routes for everything that is not on the hot path."""
