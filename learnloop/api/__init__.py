"""The FastAPI app: ingest, status, control, registry, OpenAI routes and dashboard pages."""

from learnloop.api.app import create_app

__all__ = [
    "create_app",
]
