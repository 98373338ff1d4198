"""The distributed executor: updates go to Celery workers through Redis; their state lives in the store, so every
API replica reports the same status and progress."""

from __future__ import annotations

import logging
import time

import redis
from kombu.exceptions import OperationalError

from registry import Store, StoreUnavailable
from registry.redis_store import redact
from worker.app import create_app, send_update
from worker.config import WorkerSettings
from worker.executor import Executor
from worker.recovery import sweep

log = logging.getLogger(__name__)

RESEND_AFTER_S = 60.0
"""A record queued for longer than this may have lost its task (a failed send): `recover` sends it again."""


class CeleryExecutor(Executor):
    """Sends each update as a Celery task (id derived from the update id) to the ``updates`` queue."""

    def __init__(self, store: Store, settings: WorkerSettings) -> None:
        self.store, self.settings = store, settings
        self.app = create_app(settings)

    def submit(self, name: str, update_id: str) -> None:
        try:
            send_update(self.app, name, update_id)
        except (OperationalError, redis.RedisError, OSError) as exc:
            where = redact(self.settings.broker_url or "")
            message = f"the task queue at {where} is unreachable ({exc}); the update stays queued"
            raise StoreUnavailable(message) from exc

    def queue_depth(self) -> int:
        """Updates stored as queued, over all models (the same number on every replica)."""
        return sum(u.status == "queued" for m in self.store.list_models() for u in self.store.active_updates(m.name))

    def recover(self, store: Store) -> list[str]:
        """Send again the tasks of updates queued for a while (their task may have been lost; a duplicate finds
        the update finished).  Running updates are the recovery sweep's (`worker.recovery`): it re-queues one
        whose lock nobody holds."""
        resent = []
        now = time.time()
        for model in store.list_models():
            for record in store.active_updates(model.name):
                if record.status == "queued" and now - record.created_at > RESEND_AFTER_S:
                    self.submit(model.name, record.update_id)
                    resent.append(record.update_id)
        return resent + [update_id for _, update_id in sweep(store, self.submit, self.settings).requeued]

    def shutdown(self, wait: bool = True) -> None:
        """Release the broker connections (the updates themselves run on, in the workers)."""
        self.app.close()
