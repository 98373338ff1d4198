"""The audit trail: every state change as one structured JSON line on the ``cl.audit`` logger.

Events: model created or deleted, samples accepted or deleted, update started/finished/rejected/cancelled,
promotion, rollback, a version pinned or unpinned, versions deleted by retention.  The actor is a key's name (a
digest, see service.auth), never the key itself.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

logger = logging.getLogger("cl.audit")


def audit(event: str, *, actor: str | None, model: str | None = None, **fields: Any) -> None:
    """Log one state change."""
    entry = {"ts": round(time.time(), 3), "event": event, "actor": actor, "model": model, **fields}
    logger.info(json.dumps(entry, separators=(",", ":"), sort_keys=False, default=str))


def install_handler(stream: Any = None) -> None:
    """Write the audit lines unadorned (one JSON object per line) to ``stream`` (default stderr)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
