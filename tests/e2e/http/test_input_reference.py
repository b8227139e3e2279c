"""OpenAI's input_reference file through a real `videoqueue serve`, real workers, SeaweedFS
and the sandbox: stored in our bucket by its sha256, named by the job (never a URL), and
handed to the provider as its dialect takes it (a file part, or a presigned image_url)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
from openai import OpenAI

from bench.faults import Mode, TcpProxy
from ops.serve import free_port
from producer import JobStatus, enqueue, get, wait
from producer.core.keys import create_key
from producer.jobs import list_jobs
from tests.e2e.conftest import BUCKET, eventually
from tests.e2e.http.conftest import wait_video
from tests.unit.images import png

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning"),
]
OPENAI = {"VIDEOQUEUE_API_DIALECT": "openai", "VIDEOQUEUE_API_FORMAT": "openai"}


def _prefix() -> str:
    # A prefix of the test's own: the bucket is shared, and a sweep deletes by age.
    return f"inputs-{uuid.uuid4().hex[:12]}/"


def _objects(s3_client, prefix: str) -> dict[str, bytes]:
    found = s3_client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {
        o["Key"]: s3_client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in found
    }


def _sandbox_task(gw, job_id: str) -> dict:
    task_id = get(job_id, settings=gw.pipeline.settings).provider_task_id
    return gw.pipeline.sandbox.stats()["tasks"][task_id]


def test_the_openai_sdk_uploads_a_reference_image_that_reaches_openai_as_the_same_file(
    make_gateway, s3_client, tmp_path
):
    prefix = _prefix()
    gw = make_gateway(env={**OPENAI, "VIDEOQUEUE_S3_INPUT_PREFIX": prefix},
                      sandbox={"flavor": "openai"})  # fmt: skip
    image = tmp_path / "portrait.png"
    image.write_bytes(data := png(720, 1280, shade=7))
    digest = hashlib.sha256(data).hexdigest()
    sdk = OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key("acme"), max_retries=0)
    with sdk, image.open("rb") as f:
        done = sdk.videos.create_and_poll(
            model="sora-2", prompt="she dances", seconds="4", size="720x1280", input_reference=f
        )
    assert done.status == "completed", done.error
    record = get(done.id, settings=gw.pipeline.settings)
    assert record.request["image_object"] == {
        "bucket": BUCKET, "key": f"{prefix}{digest}", "content_type": "image/png",
        "sha256": digest, "size_bytes": len(data),
    }  # fmt: skip
    assert "http" not in json.dumps(record.request)  # the object, never a URL of it
    assert _objects(s3_client, prefix) == {f"{prefix}{digest}": data}
    # The sandbox (OpenAI's flavor) took it as OpenAI does: a multipart file part, checked
    # to be an image of the video's size.
    assert _sandbox_task(gw, done.id)["input_reference_sha256"] == digest


def test_a_router_gets_a_presigned_image_url_that_fetches_the_uploaded_bytes(
    make_gateway, s3_client
):
    gw = make_gateway(env={"VIDEOQUEUE_S3_INPUT_PREFIX": _prefix()})
    data = png(64, 48, shade=9)
    with gw.client("acme") as http:
        created = http.post(
            "/v1/videos",
            data={"model": "sora", "prompt": "she starts dancing", "size": "64x48", "seconds": "1"},
            files={"input_reference": ("cat.png", data, "application/octet-stream")},
        )
        # The unified route takes the same form (its aspect_ratio instead of a size).
        unified = http.post(
            "/v1/video/create",
            data={"model": "sora", "prompt": "she starts dancing", "aspect_ratio": "16:9",
                  "seconds": "1", "api_format": "unified"},
            files={"input_reference": ("cat.png", data, "image/png")},
        )  # fmt: skip
        assert (created.status_code, unified.status_code) == (200, 200), unified.text
        videos = [wait_video(http, r.json()["id"]) for r in (created, unified)]
    for video in videos:
        assert video["status"] == "completed", video
        url = _sandbox_task(gw, video["id"])["image_url"]
        assert "Signature" in url  # presigned at submit time...
        assert httpx.get(url).content == data  # ...for the very bytes uploaded
        record = get(video["id"], settings=gw.pipeline.settings)
        assert "image_url" not in record.request and url not in record.model_dump_json()
    assert _sandbox_task(gw, videos[1]["id"])["kind"] == "unified"


def test_a_non_image_or_oversized_reference_is_refused_naming_it_and_nothing_is_written(
    make_gateway, s3_client
):
    prefix = _prefix()
    gw = make_gateway(workers=0, env={"VIDEOQUEUE_S3_INPUT_PREFIX": prefix,
                                      "VIDEOQUEUE_HTTP_MAX_UPLOAD_BYTES": "4096"})  # fmt: skip
    form = {"model": "sora", "prompt": "p", "size": "64x48", "seconds": "1"}
    noisy = png(64, 48)[:33] + os.urandom(6000)  # a PNG's header, then more than the bound
    cases = [
        # A text file, sent as a PNG: the bytes decide.
        (form, ("cat.png", b"just some text, not an image", "image/png"), 400, "invalid_image"),
        (form, ("cat.gif", b"GIF89a" + bytes(64), "image/gif"), 400, "invalid_image"),
        (form, ("big.png", noisy, "image/png"), 413, "file_too_large"),
        # Past the form's whole bound (body + upload): refused before it is parsed.
        (form, ("huge.png", bytes(2 << 20), "image/png"), 413, "request_too_large"),
        # A valid image with a bad field: the request is refused, the image not stored.
        ({**form, "seconds": "x"}, ("cat.png", png(64, 48), "image/png"), 400, "invalid_value"),
        ({**form, "provider": "nowhere"}, ("cat.png", png(64, 48), "image/png"), 400, None),
    ]
    with gw.client("acme") as http:
        for fields, upload, status, code in cases:
            answer = http.post("/v1/videos", data=fields, files={"input_reference": upload})
            assert answer.status_code == status, (upload[0], answer.text)
            error = answer.json()["error"]
            param = "provider" if "provider" in fields else (
                "seconds" if fields["seconds"] == "x" else "input_reference")  # fmt: skip
            assert error["param"] == param, (upload[0], error)
            assert code is None or error["code"] == code, (upload[0], error)
            assert "input_reference" in error["message"] or param != "input_reference"
        image = {"input_reference": ("a.png", png(64, 48), "image/png")}
        both = http.post("/v1/videos", data={**form, "image_url": "https://e.x/a.jpg"}, files=image)
        assert both.status_code == 400 and both.json()["error"]["param"] == "input_reference"
        assert http.get("/v1/videos").json()["data"] == []
    assert list_jobs(tenant="acme", settings=gw.pipeline.settings) == ([], False)
    assert _objects(s3_client, prefix) == {}


def test_an_idempotency_key_with_a_file_answers_the_first_job(make_gateway, s3_client):
    """Same key and same file: the same job. Same key and another file: still the first job
    (README: a repeat with the key answers the earlier job, whatever its body)."""
    prefix = _prefix()
    gw = make_gateway(workers=0, env={"VIDEOQUEUE_S3_INPUT_PREFIX": prefix})
    form = {"model": "sora", "prompt": "p", "size": "64x48", "seconds": "1"}
    first, other = png(64, 48, shade=1), png(64, 48, shade=2)
    with gw.client("acme") as http:

        def create(data: bytes, key: str) -> httpx.Response:
            return http.post("/v1/videos", data=form, headers={"Idempotency-Key": key},
                             files={"input_reference": ("a.png", data, "image/png")})  # fmt: skip

        a, b, c = create(first, "k1"), create(first, "k1"), create(other, "k1")
        d = create(first, "k2")
        assert [r.status_code for r in (a, b, c, d)] == [200] * 4, [r.text for r in (a, b, c, d)]
        assert a.json()["id"] == b.json()["id"] == c.json()["id"] != d.json()["id"]
    job = get(a.json()["id"], settings=gw.pipeline.settings)
    assert job.request["image_object"]["sha256"] == hashlib.sha256(first).hexdigest()
    assert len(list_jobs(tenant="acme", settings=gw.pipeline.settings)[0]) == 2


@pytest.mark.timeout(120)
def test_a_gateway_killed_between_storing_the_image_and_the_job_leaves_no_job_and_a_swept_image(
    make_pipeline, s3, s3_client, tmp_path
):
    host, port = s3.endpoint_url.removeprefix("http://").split(":")
    proxy = TcpProxy((host, int(port)))
    prefix = _prefix()
    try:
        # Records kept 3 s, so that an image 3 s old is stale; a sweep may run every 10 s.
        p = make_pipeline(env={
            "VIDEOQUEUE_S3_ENDPOINT_URL": proxy.url, "VIDEOQUEUE_S3_INPUT_PREFIX": prefix,
            "VIDEOQUEUE_RECORD_TTL_S": "3", "VIDEOQUEUE_STEP_TIMEOUT_S": "10",
        })  # fmt: skip
        _, key = create_key("acme", settings=p.settings)
        url = f"http://127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "ops", "serve", "--port", url.rsplit(":", 1)[1],
                "--log-level", "warning"]  # fmt: skip
        with (tmp_path / "serve.log").open("w") as log:
            serve = subprocess.Popen(argv, env={**os.environ, **p.env}, stdout=log, stderr=log)
        try:
            eventually(lambda: _up(url), 30)
            # S3 stores the image, and its answer never reaches the gateway.
            proxy.set_mode(Mode.MUTE_REPLIES)
            data = png(64, 48, shade=3)
            threading.Thread(target=_post_quietly, args=(url, key, data), daemon=True).start()
            eventually(lambda: _objects(s3_client, prefix), 30)
            serve.kill()  # the crash, between the image stored and the job written
            serve.wait(10)
        finally:
            serve.kill()
        proxy.set_mode(Mode.PASS)
        assert list_jobs(tenant="acme", settings=p.settings) == ([], False)
        assert list(_objects(s3_client, prefix).values()) == [data]  # orphaned
        time.sleep(3.5)  # older than record_ttl_s by the next finalize's sweep

        # Once older than record_ttl_s, a worker's sweep (at its next finalize) deletes it.
        job_id = enqueue(p.request(), settings=p.settings)
        assert wait(job_id, 60, settings=p.settings).status is JobStatus.COMPLETED
        eventually(lambda: not _objects(s3_client, prefix), 30, 0.5)
    finally:
        proxy.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _post_quietly(url: str, key: str, data: bytes) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the gateway dies under it: the point
        httpx.post(f"{url}/v1/videos", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                   data={"model": "sora", "prompt": "p", "size": "64x48", "seconds": "1"},
                   files={"input_reference": ("a.png", data, "image/png")})  # fmt: skip
