"""The producer's public surface, and what importing it costs a backend."""

import subprocess
import sys

import producer


def test_producer_exports_exactly_the_intended_names():
    assert set(producer.__all__) == {
        "BatchRecord", "cancel_batch", "enqueue_batch", "get_batch",
        "CharacterRequest", "InvalidRequest", "JobNotFound", "JobRecord", "JobStatus", "Scene",
        "VideoRequest", "VideoqueueError", "WaitTimeout", "WebhookVerificationError", "cancel",
        "enqueue", "get", "verify_webhook", "wait",
    }  # fmt: skip


def test_importing_the_producer_loads_no_worker_celery_or_boto3():
    code = (
        "import sys, producer, producer.cli;"
        "heavy = {'worker', 'celery', 'boto3', 'botocore', 'kombu'};"
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_http_service_loads_no_worker_celery_or_boto3_and_the_sandbox_no_fastapi():
    """The HTTP service is a producer: it calls the verbs, runs no step, and loads boto3 only
    for its first download; the sandbox shares its body parsing without loading FastAPI."""
    code = (
        "import sys, producer.http.app;"
        "heavy = {'worker', 'celery', 'boto3', 'botocore', 'kombu'};"
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    sandbox = "import sys, ops.sandbox.app; sys.exit('fastapi' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", sandbox]).returncode == 0
