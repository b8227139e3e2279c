"""videoqueue's Celery worker: `celery -A worker worker`.

Submits jobs to the video API, polls them with backoff as rescheduled tasks, streams each
finished MP4 into S3 and sends the signed webhook.
"""

from worker import tasks  # noqa: F401  (registers the tasks with the app)
from worker.app import app

celery = app

__all__ = ["app", "celery"]
