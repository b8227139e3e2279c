"""The local stack's services, run for real: SeaweedFS, Redis, a Celery worker, the receiver."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis
from standardwebhooks import Webhook

from ops.receiver import WebhookReceiver
from ops.serve import free_port
from ops.stack import (
    LocalStack,
    StackError,
    celery_worker,
    ensure_redis,
    local_stack,
    redis_server,
    seaweedfs,
)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One private Redis and one SeaweedFS for the module."""
    with local_stack(tmp_path_factory.mktemp("stack"), redis_url=None) as running:
        yield running


# --- S3 -------------------------------------------------------------------------------------


def test_seaweedfs_multipart_upload_round_trips(stack: LocalStack) -> None:
    """A two-part multipart upload reads back byte for byte, with the size in HEAD."""
    parts = [os.urandom(5 * MiB), os.urandom(MiB // 3)]
    key = f"test/{uuid.uuid4().hex}.bin"
    client = stack.s3.client()
    try:
        upload = client.create_multipart_upload(Bucket=stack.bucket, Key=key)
        etags = [
            client.upload_part(
                Bucket=stack.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=n, Body=data
            )["ETag"]
            for n, data in enumerate(parts, start=1)
        ]
        client.complete_multipart_upload(
            Bucket=stack.bucket,
            Key=key,
            UploadId=upload["UploadId"],
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]
            },
        )
        head = client.head_object(Bucket=stack.bucket, Key=key)
        body = client.get_object(Bucket=stack.bucket, Key=key)["Body"]
        try:
            got = body.read()
        finally:
            body.close()
        client.delete_object(Bucket=stack.bucket, Key=key)
    finally:
        client.close()
    assert head["ContentLength"] == sum(len(p) for p in parts)
    assert hashlib.sha256(got).digest() == hashlib.sha256(b"".join(parts)).digest()


def test_local_stack_env_points_at_its_services(stack: LocalStack) -> None:
    assert stack.env["VIDEOQUEUE_BROKER_URL"] == stack.broker_url
    assert stack.env["VIDEOQUEUE_S3_ENDPOINT_URL"] == stack.s3.endpoint_url
    assert stack.env["VIDEOQUEUE_S3_BUCKET"] == stack.bucket
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        assert stack.env[name]


# --- Redis ----------------------------------------------------------------------------------


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def test_seaweedfs_restarted_on_its_workdir_serves_the_same_objects_on_the_same_port(
    tmp_path: Path,
) -> None:
    with seaweedfs(tmp_path) as first:
        first.ensure_bucket("restart")
        client = first.client()
        client.put_object(Bucket="restart", Key="k", Body=b"kept across a restart")
        client.close()
    with seaweedfs(tmp_path) as second:
        assert second.endpoint_url == first.endpoint_url
        client = second.client()
        try:
            body = client.get_object(Bucket="restart", Key="k")["Body"].read()
        finally:
            client.close()
    assert body == b"kept across a restart"


def test_redis_server_restarted_on_its_aof_keeps_what_it_answered_and_always_fsyncs(
    tmp_path: Path,
) -> None:
    port = free_port()
    with redis_server(port, tmp_path, appendfsync="always") as url:
        client = redis.Redis.from_url(url)
        client.set("k", "v")
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.close()
    with redis_server(port, tmp_path, appendfsync=None) as url:
        client = redis.Redis.from_url(url)
        assert client.config_get("appendonly") == {"appendonly": "no"}
        client.close()  # without AOF it loads nothing: the AOF dir stays for the next
    with redis_server(port, tmp_path) as url:
        client = redis.Redis.from_url(url)
        try:
            assert client.get("k") == b"v"
        finally:
            client.close()


def test_redis_server_is_private_persistent_and_gone_after_the_block(tmp_path: Path) -> None:
    with redis_server(workdir=tmp_path) as url:
        client = redis.Redis.from_url(url)
        try:
            assert client.ping()
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        finally:
            client.close()
    assert not _answers(url)
    assert (tmp_path / "redis.log").read_text()


def test_redis_server_whose_picked_port_another_redis_took_runs_on_another_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port picked free and taken before the server binds it (another test's server, on
    another xdist worker): the server is started on another port, and the block never gets
    the URL of the Redis that took it."""
    with redis_server(workdir=tmp_path / "other") as other_url:
        taken = int(other_url.rsplit(":", 1)[1].split("/")[0])
        picks = iter([taken])
        monkeypatch.setattr("ops.stack.free_port", lambda: next(picks, None) or free_port())
        with redis_server(workdir=tmp_path / "mine") as url:
            assert url != other_url
            mine, other = redis.Redis.from_url(url), redis.Redis.from_url(other_url)
            try:
                assert mine.info("server")["process_id"] != other.info("server")["process_id"]
            finally:
                mine.close()
                other.close()
        assert "Address already in use" in (tmp_path / "mine" / "redis.log").read_text()


def test_ensure_redis_starts_one_only_where_none_answers(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with ensure_redis(url, workdir=tmp_path) as started:
        assert started == url
        with ensure_redis(url) as reused:  # already answering: nothing new is started
            assert _answers(reused)
    assert not _answers(url)


# --- Celery worker --------------------------------------------------------------------------

THROWAWAY_APP = """
import os

import redis
from celery import Celery

app = Celery("throwaway", broker=os.environ["VIDEOQUEUE_BROKER_URL"])
app.conf.broker_connection_retry_on_startup = True


@app.task(name="throwaway.add")
def add(key, x, y):
    client = redis.Redis.from_url(os.environ["VIDEOQUEUE_BROKER_URL"])
    client.set(key, x + y)
    client.close()
"""


def test_celery_worker_runs_a_task_and_kill_leaves_no_process(
    tmp_path: Path, stack: LocalStack
) -> None:
    (tmp_path / "throwaway.py").write_text(textwrap.dedent(THROWAWAY_APP))
    queue = f"test-{uuid.uuid4().hex[:8]}"
    key = f"test:{queue}:result"
    env = {**stack.env, "PYTHONPATH": str(tmp_path)}
    client = redis.Redis.from_url(stack.broker_url)
    try:
        with celery_worker(
            env, app="throwaway", queues=queue, concurrency=2, logfile=tmp_path / "w.log"
        ) as worker:
            # A raw Celery protocol-2 message, so the test process needs no Celery app.
            task_id = str(uuid.uuid4())
            body = base64.b64encode(json.dumps([[key, 2, 3], {}, {}]).encode()).decode()
            message = {
                "body": body,
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": {"lang": "py", "task": "throwaway.add", "id": task_id},
                "properties": {
                    "correlation_id": task_id,
                    "delivery_info": {"exchange": "", "routing_key": queue},
                    "delivery_mode": 2,
                    "delivery_tag": str(uuid.uuid4()),
                    "body_encoding": "base64",
                    "priority": 0,
                },
            }
            client.lpush(queue, json.dumps(message))
            deadline = time.monotonic() + 10
            while client.get(key) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.get(key) == b"5", worker.log_text()[-2000:]

            pids = worker.alive_pids()
            assert len(pids) >= 3  # the consumer and two pool children
            worker.kill()
            assert worker.alive_pids() == []
        assert "ready." in (tmp_path / "w.log").read_text()
    finally:
        client.delete(key, queue)
        client.close()


def test_celery_worker_block_exit_stops_the_worker_and_its_pool(
    tmp_path: Path, stack: LocalStack
) -> None:
    (tmp_path / "throwaway.py").write_text(textwrap.dedent(THROWAWAY_APP))
    env = {**stack.env, "PYTHONPATH": str(tmp_path)}
    queue = f"test-{uuid.uuid4().hex[:8]}"
    with celery_worker(
        env, app="throwaway", queues=queue, concurrency=1, logfile=tmp_path / "w.log"
    ) as worker:
        assert worker.alive_pids()
    assert worker.alive_pids() == []
    assert worker.popen.returncode == 0, worker.log_text()[-2000:]


def test_celery_worker_that_cannot_start_raises_with_its_log(
    tmp_path: Path, stack: LocalStack
) -> None:
    with (
        pytest.raises(StackError, match=r"exited with code [^0](.|\n)*no_such_module_here"),
        celery_worker(stack.env, app="no_such_module_here", logfile=tmp_path / "w.log"),
    ):
        pass


# --- webhook receiver -----------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _signed(payload: dict[str, object], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(tz=UTC)
    signature = Webhook(secret).sign(msg_id, now, body.decode())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    return body, headers


def test_receiver_accepts_good_signatures_and_rejects_bad_ones() -> None:
    receiver = WebhookReceiver(SECRET)
    other_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    with receiver.serve() as url, httpx.Client() as http:
        body, headers = _signed({"type": "video.completed", "n": 1})
        good = http.post(url, content=body, headers=headers)
        tampered = http.post(url, content=body.replace(b"1", b"2"), headers=headers)
        forged = http.post(url, content=body, headers=_signed({"n": 1}, other_secret)[1])
        unsigned = http.post(url, json={"type": "video.failed"})
        listed = http.get(url.rsplit("/", 1)[0] + "/_receiver/deliveries").json()
    codes = [r.status_code for r in (good, tampered, forged, unsigned)]
    assert codes == [200, 401, 401, 401]
    assert receiver.verified_events() == [{"type": "video.completed", "n": 1}]
    assert [d.verified for d in receiver.deliveries] == [True, False, False, False]
    assert [d["status"] for d in listed] == codes


def test_receiver_fail_first_and_status_sequence_then_accepts() -> None:
    receiver = WebhookReceiver(SECRET)
    receiver.status_sequence = [429]
    receiver.fail_first = 2
    with receiver.serve() as url, httpx.Client() as http:
        codes = []
        for _ in range(4):
            body, headers = _signed({"type": "video.completed"})
            codes.append(http.post(url, content=body, headers=headers).status_code)
        delivery = receiver.wait_for(lambda d: d.status == 200, timeout_s=1)
    assert codes == [429, 500, 500, 200]
    assert delivery.verified is True
    assert len(receiver.verified_events()) == 1
