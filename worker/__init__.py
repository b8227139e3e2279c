"""videoqueue's Celery worker: `celery -A worker worker`.

Claims due work from the durable schedule (worker/pump.py), submits jobs to the video API,
polls them in batches, streams each finished MP4 into S3 and sends the signed webhook.
"""

from worker import tasks  # noqa: F401  (registers the tasks with the app)
from worker.app import app

celery = app

__all__ = ["app", "celery"]
