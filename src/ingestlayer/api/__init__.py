"""HTTP API: the raw-ASGI ingest hot path and FastAPI routers for everything else."""
