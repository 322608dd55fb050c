"""The HTTP API: endpoints and the app factory (`app.py`), the OpenAPI document and docs pages
(`openapi.py`, `docs.py`), problems (`problems.py`), event streams and waits (`streams.py`),
Idempotency-Key (`idempotency.py`), backpressure (`backlog.py`), and what the API says in JSON
(`models.py`). Built on the image domain and the queue."""

from app.api.app import create_app

__all__ = ["create_app"]
