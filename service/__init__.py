"""The FastAPI service: predictions (micro-batched), ingestion, updates, versions and the forgetting report."""
