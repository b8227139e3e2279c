"""Bounds through real workers: metadata a header cannot carry, videos over the size cap,
downloads that drip, and provider or receiver answers that never end."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import httpx
import pytest

from producer import InvalidRequest, JobStatus, enqueue, get, wait
from producer.core.metadata import decode_value
from producer.core.records import WebhookState
from producer.core.urls import UrlPolicy
from tests.e2e.conftest import BUCKET, eventually
from worker.egress import GuardedTransport
from worker.webhooks import deliver


def _objects(s3_client, job_id):
    found = s3_client.list_objects_v2(Bucket=BUCKET, Prefix=f"videos/{job_id}")
    return found.get("Contents", [])


def test_metadata_a_header_cannot_carry_completes_on_the_first_download(make_pipeline, s3_client):
    p = make_pipeline()
    metadata = {"note": "line one\nline two", "Ünïcode Kéy": "café ☕", "plain": "order 17",
                "edge": " spaced "}  # fmt: skip
    job_id = enqueue(p.request(metadata=metadata), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.copy_attempts == 1 and record.metadata == metadata
    stored = s3_client.head_object(Bucket=BUCKET, Key=record.output.key)["Metadata"]
    assert stored["job-id"] == job_id
    assert decode_value(stored["note"]) == "line one\nline two"
    assert decode_value(stored["%c3%bcn%c3%afcode%20k%c3%a9y"]) == "café ☕"
    assert stored["plain"] == "order 17" and decode_value(stored["edge"]) == " spaced "


def test_metadata_too_big_for_s3_is_refused_at_enqueue_naming_the_field(make_pipeline):
    p = make_pipeline(workers=0)
    with pytest.raises(InvalidRequest) as e:
        enqueue(p.request(metadata={f"k{i}": "é" * 100 for i in range(10)}), settings=p.settings)
    assert {x["field"] for x in e.value.errors} == {"metadata"}


@pytest.mark.parametrize("unsized", [False, True], ids=["content-length", "chunked"])
def test_a_video_over_the_size_cap_fails_too_large_and_leaves_no_object(
    make_pipeline, s3_client, unsized
):
    p = make_pipeline(
        sandbox={"file_padding_bytes": 3 << 20, "file_unsized": unsized},
        env={"VIDEOQUEUE_MAX_VIDEO_BYTES": str(1 << 20)},
    )
    job_id = enqueue(p.request(), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.FAILED
    assert record.error.code == "too_large" and record.copy_attempts == 1
    assert _objects(s3_client, job_id) == []
    uploads = s3_client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"videos/{job_id}")
    assert uploads.get("Uploads", []) == []


def test_a_dripping_download_ends_its_job_at_the_deadline_while_others_complete(
    make_pipeline,
):
    # Each 50-byte piece arrives about every second, well within the per-read timeout: only
    # the total deadline can end this download (the whole ~1.7 KB file would take 30 s).
    p = make_pipeline(
        sandbox={"file_chunk_bytes": 50, "file_stream_s": 30},
        env={"VIDEOQUEUE_DOWNLOAD_DEADLINE_S": "4", "VIDEOQUEUE_DOWNLOAD_TIMEOUT_S": "5"},
    )
    slow = enqueue(p.request(), settings=p.settings)
    eventually(lambda: get(slow, settings=p.settings).status is JobStatus.FINALIZING, 30)
    began = time.monotonic()
    time.sleep(1.5)  # its download has begun (and keeps its drip after the knobs change)
    p.sandbox.configure(file_chunk_bytes=1 << 20, file_stream_s=0)
    quick = enqueue(p.request(), settings=p.settings)
    assert wait(quick, 30, settings=p.settings).status is JobStatus.COMPLETED
    record = wait(slow, 30, settings=p.settings)
    assert record.status is JobStatus.FAILED and record.error.code == "download_timeout"
    assert time.monotonic() - began < 15


@pytest.mark.parametrize("knob", ["endless_rate", "drip_rate"])
def test_endless_or_dripping_status_answers_are_cut_off_and_the_job_still_completes(
    make_pipeline, knob
):
    # A dripped status answer would take minutes whole; each is cut at API_TIMEOUT_S (3 s).
    p = make_pipeline(sandbox={knob: 0.5})
    job_ids = [enqueue(p.request(), settings=p.settings) for _ in range(3)]
    for job_id in job_ids:
        record = wait(job_id, 60, settings=p.settings)
        assert record.status is JobStatus.COMPLETED, record.error
    faults = p.sandbox.stats(include_tasks=False)["totals"]["faults"]
    assert faults.get(knob.removesuffix("_rate"), 0) >= 1


def test_a_receiver_answering_an_endless_body_still_counts_as_delivered(make_pipeline):
    p = make_pipeline(env={"VIDEOQUEUE_WEBHOOK_TIMEOUT_S": "3"})
    p.receiver.endless_body = True
    job_id = enqueue(p.request(), settings=p.settings)
    assert wait(job_id, 60, settings=p.settings).status is JobStatus.COMPLETED
    began = time.monotonic()
    record = eventually(
        lambda: (
            (r := get(job_id, settings=p.settings)).webhook.state is not WebhookState.PENDING and r
        ),
        20,
    )
    assert record.webhook.state is WebhookState.DELIVERED and record.webhook.attempts == 1
    assert time.monotonic() - began < 10


@pytest.fixture
def dripping_server():
    """A server on loopback that reads one request, then drips its answer's status line a
    byte every 0.3 s: within every per-read timeout, never done."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 1000:
                if stop.wait(0.3):
                    return
                with contextlib.suppress(OSError):
                    conn.sendall(bytes([byte]))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    server.close()
    thread.join(5)


def test_a_receiver_dripping_its_answers_head_is_cut_off_at_the_webhook_timeout(
    dripping_server,
):
    transport = GuardedTransport(UrlPolicy(["127.0.0.0/8"]))
    with httpx.Client(transport=transport) as http:
        began = time.monotonic()
        result = deliver(http, f"{dripping_server}/hook", "{}", "msg_1", None, timeout_s=1.5)
    assert time.monotonic() - began < 3
    assert not result.ok and result.error == "timed out: over 1.5 s in all"


def test_a_file_host_dripping_its_answers_head_fails_the_job_at_the_download_deadline(
    make_pipeline, dripping_server
):
    # The unified format's file URL redirects to the CDN, here the dripping server.
    p = make_pipeline(
        sandbox={"cdn_base_url": dripping_server},
        env={"VIDEOQUEUE_API_FORMAT": "unified", "VIDEOQUEUE_DOWNLOAD_DEADLINE_S": "2",
             "VIDEOQUEUE_DOWNLOAD_TIMEOUT_S": "5"},
    )  # fmt: skip
    job_id = enqueue(p.request(), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.FAILED and record.error.code == "download_timeout"
    assert record.copy_attempts == 1
