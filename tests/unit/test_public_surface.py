"""The producer's public surface, and what importing it costs a backend."""

import json
import subprocess
import sys

import producer


def test_producer_exports_exactly_the_intended_names():
    assert set(producer.__all__) == {
        "BatchRecord", "BudgetExceeded", "cancel_batch", "enqueue_batch", "get_batch",
        "CharacterRequest", "InvalidRequest", "JobNotFound", "JobRecord", "JobStatus",
        "NotEnoughReplicas", "Scene", "VideoRequest", "VideoqueueError", "WaitTimeout",
        "WebhookVerificationError", "cancel", "enqueue", "get", "verify_webhook", "wait",
    }  # fmt: skip


def _loaded(modules: str, heavy: set[str]) -> list[str]:
    """The top-level packages of `heavy` that importing `modules` (in a fresh interpreter)
    loads."""
    found = f"sorted({{m.split('.')[0] for m in sys.modules}} & {heavy!r})"
    code = f"import json, sys, {modules}; print(json.dumps({found}))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    loaded: list[str] = json.loads(run.stdout)
    return loaded


WORKER_SIDE = {"worker", "celery", "boto3", "botocore", "kombu"}


def test_importing_the_producer_loads_no_worker_celery_or_boto3():
    assert _loaded("producer, producer.cli", WORKER_SIDE) == []


def test_the_http_service_loads_no_worker_celery_or_boto3_and_the_sandbox_no_fastapi():
    """The HTTP service is a producer: it calls the verbs, runs no step, and loads boto3 only
    for its first download; the sandbox shares its body parsing without loading FastAPI."""
    assert _loaded("producer.http.app", WORKER_SIDE) == []
    assert _loaded("ops.sandbox.app", {"fastapi"}) == []
