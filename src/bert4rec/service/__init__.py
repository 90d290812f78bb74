"""Serving: the HTTP app, the event store and the micro-batching scorer.

``create_app(run_dir, db)`` builds the FastAPI app that ``bert4rec serve`` runs.
"""

from bert4rec.service.app import create_app
from bert4rec.service.store import EventStore, open_store

__all__ = ["EventStore", "create_app", "open_store"]
