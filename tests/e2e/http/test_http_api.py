"""The HTTP API through a real `videoqueue serve` process, real workers, Redis, SeaweedFS and
the sandbox: OpenAI's SDK unchanged but for base_url and api_key, and plain HTTP in the
router's format (no project import on the client side)."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
import redis
from openai import OpenAI

from ops.serve import free_port, serve_in_thread
from ops.stack import http_service
from producer import get
from producer.core.keys import create_key, revoke_key
from tests.e2e.conftest import BUCKET, eventually
from tests.e2e.http.conftest import wait_video
from tests.e2e.sandbox_helpers import probe

# The SDK marks its Sora methods deprecated; the shapes are what matter here, and pytest runs
# with warnings as errors.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning")


def _stored(s3_client, settings, job_id: str) -> bytes:
    record = get(job_id, settings=settings)
    assert record.output is not None and record.output.bucket == BUCKET
    return s3_client.get_object(Bucket=BUCKET, Key=record.output.key)["Body"].read()


def test_the_openai_sdk_creates_polls_lists_and_downloads_through_the_gateway(
    make_gateway, s3_client, tmp_path
):
    gw = make_gateway()
    with OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key("acme"), max_retries=0) as sdk:
        # It polls as the gateway's openai-poll-after-ms says: 500 ms with the tests' settings.
        done = sdk.videos.create_and_poll(
            prompt="a cat playing piano", model="sora-2", seconds="4", size="720x1280"
        )
        assert done.status == "completed" and done.progress == 100 and done.object == "video"
        assert (done.seconds, done.size, done.model) == ("4", "720x1280", "sora-2")
        assert done.id.startswith("job_") and done.completed_at >= done.created_at
        assert done.expires_at > done.completed_at and done.error is None

        again = sdk.videos.retrieve(done.id)
        assert again.id == done.id and again.status == "completed"

        path = tmp_path / "out.mp4"
        sdk.videos.download_content(done.id).write_to_file(path)
        assert path.read_bytes() == _stored(s3_client, gw.pipeline.settings, done.id)
        assert probe(path.read_bytes()) == (720, 1280, 4.0)

        more = []
        for i in range(3):
            time.sleep(0.01)  # three creation times, so that "newest first" is one order
            more.append(
                sdk.videos.create(
                    prompt=f"clip {i}", model="sora-2", extra_body={"metadata": {"clip": str(i)}}
                )
            )
        listed = [v.id for v in sdk.videos.list(limit=2)]  # the SDK pages by `after`
        assert listed == [v.id for v in reversed(more)] + [done.id]
        # our metadata, sent in OpenAI's form as metadata[clip]=2, read back as an extra field
        assert sdk.videos.retrieve(more[2].id).model_extra["metadata"] == {"clip": "2"}

        with pytest.raises(openai.ConflictError):  # completed: kept, not cancellable
            sdk.videos.delete(done.id)
        with pytest.raises(openai.NotFoundError):
            sdk.videos.retrieve("job_nope")


def test_the_openai_sdk_deletes_an_unfinished_video_by_cancelling_it(make_gateway):
    gw = make_gateway(workers=0)  # nothing runs: the job stays queued
    with OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key("acme"), max_retries=0) as sdk:
        video = sdk.videos.create(prompt="a fox", model="sora-2", seconds="8")
        assert video.status == "queued" and video.seconds == "8"
        deleted = sdk.videos.delete(video.id)
        assert (deleted.id, deleted.deleted, deleted.object) == (video.id, True, "video.deleted")
        after = sdk.videos.retrieve(video.id)
        assert after.status == "failed" and after.error and after.error.code == "cancelled"
        assert get(video.id, settings=gw.pipeline.settings).status.value == "cancelled"
        assert sdk.videos.delete(video.id).deleted  # cancelling twice is still cancelled


def test_a_router_client_completes_a_job_and_fetches_video_url_without_its_key(
    make_gateway, s3_client
):
    gw = make_gateway()
    p = gw.pipeline
    body = {"model": "sora", "prompt": "a cat playing piano in a jazz club", "size": "64x48",
            "duration": 2, "webhook_url": p.receiver.url, "metadata": {"order": "17"},
            "provider": "default"}  # fmt: skip
    with gw.client("acme") as http:
        created = http.post("/v1/videos", json=body, headers={"Idempotency-Key": "order-17"})
        assert created.status_code == 200, created.text
        answer = created.json()
        assert answer["status"] == "queued" and isinstance(answer["created_at"], int)
        repeat = http.post("/v1/videos", json=body, headers={"Idempotency-Key": "order-17"})
        assert repeat.json()["id"] == answer["id"]  # the same job, not a second one

        video = wait_video(http, answer["id"])
        assert video["status"] == "completed" and video["metadata"] == {"order": "17"}
        file = video["video"]
        assert (file["width"], file["height"], file["duration"]) == (64, 48, 2.0)
        assert file["url"].startswith(f"{gw.url}/v1/videos/{answer['id']}/content?")

    fetched = httpx.get(file["url"])  # no Authorization header: the URL is signed
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "video/mp4"
    assert fetched.content == _stored(s3_client, p.settings, answer["id"])
    ranged = httpx.get(file["url"], headers={"Range": "bytes=0-99"})
    assert ranged.status_code == 206 and ranged.content == fetched.content[:100]
    forged = httpx.get(file["url"].replace("signature=", "signature=0"))
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "invalid_signature"
    unsigned = httpx.get(file["url"].split("?")[0])
    assert unsigned.status_code == 401

    hook = p.receiver.wait_for(lambda d: d.verified and d.json["data"]["id"] == answer["id"], 30)
    assert hook.json["type"] == "video.completed"


def test_the_unified_route_storyboards_and_characters_complete(make_gateway):
    gw = make_gateway()
    with gw.client("acme") as http:
        character = http.post("/sora/v1/characters", json={
            "name": "Luna", "description": "silver hair",
            "reference_images": ["https://example.com/luna.jpg"]})  # fmt: skip
        assert character.status_code == 200, character.text
        char_id = character.json()["id"]
        assert http.get(f"/sora/v1/characters/{char_id}").json()["name"] == "Luna"
        assert http.get("/sora/v1/characters/char_nope").status_code == 404

        unified = http.post("/v1/video/create", json={
            "model": "sora", "prompt": "a cat", "aspect_ratio": "16:9", "duration": 1,
            "characters": [char_id]})  # fmt: skip
        scenes = [{"prompt": "sunrise", "duration": 1}, {"prompt": "village", "duration": 2}]
        story = http.post("/v1/videos", json={"model": "sora-pro", "size": "64x48",
                                              "storyboard": scenes})  # fmt: skip
        image = http.post("/v1/videos", json={  # OpenAI's reference image, as a URL
            "model": "sora", "prompt": "she starts dancing", "size": "64x48", "seconds": "1",
            "input_reference": {"image_url": "https://example.com/portrait.jpg"}})  # fmt: skip
        answers = (unified, story, image)
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        first, second, third = (wait_video(http, r.json()["id"]) for r in answers)
        assert first["status"] == "completed" and first["size"] == "1280x720"
        assert second["status"] == "completed" and second["seconds"] == "3"
        assert second["video"]["duration"] == 3.0 and second["model"] == "sora-pro"
        assert third["status"] == "completed" and third["seconds"] == "1"
        stored = get(third["id"], settings=gw.pipeline.settings)
        assert stored.request["image_url"] == "https://example.com/portrait.jpg"
        assert get(first["id"], settings=gw.pipeline.settings).request["characters"] == [char_id]


def test_two_tenants_cannot_see_each_others_jobs_and_an_admin_sees_both(make_gateway):
    gw = make_gateway(workers=0)
    gw.key("admin-team", admin=True)
    with gw.client("acme") as a, gw.client("globex") as b, gw.client("admin-team") as admin:
        mine = a.post("/v1/videos", json={"prompt": "acme's"}).json()["id"]
        theirs = b.post("/v1/videos", json={"prompt": "globex's"}).json()["id"]
        batch = a.post("/v1/batches", json={"requests": [{"prompt": "x"}],
                                            "batch_id": "acme-batch-1"}).json()  # fmt: skip
        for path in (f"/v1/videos/{mine}", f"/v1/videos/{mine}/content",
                     f"/v1/batches/{batch['id']}"):  # fmt: skip
            refused, unknown = b.get(path), b.get(path.replace(mine, "job_0").replace(
                batch["id"], "batch_0"))  # fmt: skip
            assert refused.status_code == unknown.status_code == 404
            assert refused.json()["error"]["code"] == unknown.json()["error"]["code"]
        assert b.delete(f"/v1/videos/{mine}").status_code == 404
        character = a.post("/sora/v1/characters", json={"name": "Luna"}).json()["id"]
        assert b.get(f"/sora/v1/characters/{character}").status_code == 404
        assert admin.get(f"/sora/v1/characters/{character}").json()["name"] == "Luna"
        assert b.post(f"/v1/batches/{batch['id']}/cancel").status_code == 404
        assert get(mine, settings=gw.pipeline.settings).status.value == "queued"
        assert a.get(f"/v1/videos/{mine}").headers["openai-poll-after-ms"] == "500"

        assert mine not in {v["id"] for v in b.get("/v1/videos").json()["data"]}
        assert {v["id"] for v in admin.get("/v1/videos?limit=100").json()["data"]} >= {
            mine, theirs}  # fmt: skip
        assert admin.get(f"/v1/videos/{theirs}").status_code == 200
        # An idempotency key is per tenant: globex's "k" is not acme's.
        ka = a.post("/v1/videos", json={"prompt": "p"}, headers={"Idempotency-Key": "k"})
        kb = b.post("/v1/videos", json={"prompt": "p"}, headers={"Idempotency-Key": "k"})
        assert ka.json()["id"] != kb.json()["id"]


def test_a_revoked_key_is_refused_by_every_replica_within_a_second(make_gateway, tmp_path):
    gw = make_gateway(workers=0)
    key, secret = create_key("acme", settings=gw.pipeline.settings)
    headers = {"Authorization": f"Bearer {secret}"}
    # A second replica (two uvicorn processes of its own) over the same Redis.
    with http_service(gw.env, workers=2, logfile=tmp_path / "replica.log") as replica:
        for url in (gw.url, replica):
            assert httpx.get(f"{url}/v1/videos", headers=headers).status_code == 200
        revoke_key(key.id, settings=gw.pipeline.settings)
        time.sleep(1.0)
        for url in (gw.url, replica, replica):
            refused = httpx.get(f"{url}/v1/videos", headers=headers)
            assert refused.status_code == 401, url
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert secret not in refused.text
    for bad in ({}, {"Authorization": "Bearer vq_nope"}, {"Authorization": "Basic eDp5"}):
        answer = httpx.get(f"{gw.url}/v1/videos", headers=bad)
        assert answer.status_code == 401 and answer.json()["error"]["type"]
    assert secret not in gw.logfile.read_text() + (tmp_path / "replica.log").read_text()


def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(make_gateway):
    gw = make_gateway(workers=0)
    prefix = gw.pipeline.settings.key_prefix
    with gw.client("acme") as http:
        keys_before = set(redis.Redis.from_url(gw.pipeline.settings.broker_url).scan_iter(
            f"{prefix}:job:*"))  # fmt: skip
        cases = [
            ({"prompt": "x", "size": "huge"}, "size"),
            ({"prompt": "x", "seconds": "four"}, "seconds"),
            ({"prompt": "x", "seconds": "4", "duration": 4}, "seconds"),
            ({"prompt": "x", "colour": "red"}, "colour"),
            ({"prompt": "x", "webhook_url": "ftp://example.com/x"}, "webhook_url"),
            ({"prompt": "x", "metadata": {"k": 5}}, "metadata.k"),
            ({"size": "64x48"}, None),  # neither prompt nor storyboard: the request as a whole
            ({"prompt": "x", "input_reference": {"file_id": "file_1"}}, "input_reference"),
            ({"prompt": "x", "provider": "nowhere"}, "provider"),
        ]
        for body, field in cases:
            answer = http.post("/v1/videos", json=body)
            assert answer.status_code == 400, (body, answer.text)
            error = answer.json()["error"]
            assert error["param"] == field, (body, error)
            assert error["type"] == "invalid_request_error" and error["message"]

        form = http.post(
            "/v1/videos",
            data={"prompt": "x", "model": "sora-2"},
            files={"input_reference": ("ref.png", b"\x89PNG", "image/png")},
        )
        # Not a PNG by its bytes (the file cases: tests/e2e/http/test_input_reference.py).
        assert form.status_code == 400 and form.json()["error"]["param"] == "input_reference"
        assert form.json()["error"]["code"] == "invalid_image"
        malformed = http.post("/v1/videos", content=b"{nope",
                              headers={"Content-Type": "application/json"})  # fmt: skip
        assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "invalid_json"
        huge = http.post("/v1/videos", json={"prompt": "x" * (2 * 1024 * 1024)})
        assert huge.status_code == 413
        assert http.get("/v1/videos?limit=0").json()["error"]["param"] == "limit"
        assert http.get("/v1/videos?after=job_unknown").json()["error"]["param"] == "after"
        bad_batch = http.post("/v1/batches", json={"batch_id": "b-bad", "requests": [
            {"prompt": "ok"}, {"prompt": "x", "size": "huge"}]})  # fmt: skip
        assert bad_batch.status_code == 400
        assert bad_batch.json()["error"]["param"] == "requests[1].size"
        assert http.get("/v1/batches/b-bad").status_code == 404
        assert http.get("/v1/nowhere").json()["error"]["code"] == "not_found"
    keys_after = set(redis.Redis.from_url(gw.pipeline.settings.broker_url).scan_iter(
        f"{prefix}:job:*"))  # fmt: skip
    assert keys_after == keys_before
    assert "Traceback" not in gw.logfile.read_text()


def test_batches_over_http_as_json_and_as_json_lines(make_gateway):
    gw = make_gateway()
    with gw.client("acme") as http:
        as_json = http.post("/v1/batches", json={
            "batch_id": "campaign-1", "metadata": {"campaign": "1"},
            "requests": [{"prompt": "a", "size": "64x48", "duration": 1},
                         {"prompt": "b", "size": "64x48", "duration": 1}]})  # fmt: skip
        assert as_json.status_code == 200, as_json.text
        batch = as_json.json()
        assert (batch["id"], batch["total"], batch["object"]) == ("campaign-1", 2, "batch")
        lines = "\n".join(json.dumps({"prompt": p, "size": "64x48", "seconds": "1"})
                          for p in ("c", "d", "e"))  # fmt: skip
        as_lines = http.post(
            "/v1/batches?batch_id=campaign-2&metadata[campaign]=2",
            content=lines,
            headers={"Content-Type": "application/jsonl"},
        )
        assert as_lines.status_code == 200, as_lines.text
        assert as_lines.json()["total"] == 3 and as_lines.json()["metadata"] == {"campaign": "2"}
        again = http.post("/v1/batches", json={"batch_id": "campaign-1", "requests": [
            {"prompt": "a", "size": "64x48", "duration": 1},
            {"prompt": "b", "size": "64x48", "duration": 1}]})  # fmt: skip
        assert again.json()["job_ids"] == batch["job_ids"]  # a retry is the same batch

        def ended():
            b = http.get("/v1/batches/campaign-2").json()
            return b["finished_at"] and b

        done = eventually(ended, 60, 0.2)
        assert done["counts"].get("completed") == 3 and done["ended"] == 3
        video = http.get(f"/v1/videos/{done['job_ids'][0]}").json()
        assert video["batch_id"] == "campaign-2" and video["seconds"] == "1"

        gw.pipeline.workers[0].stop()  # nothing runs: the next batch stays unfinished
        http.post("/v1/batches", json={"batch_id": "campaign-3", "requests": [{"prompt": "z"}]})
        cancelled = http.post("/v1/batches/campaign-3/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True


def test_a_key_over_its_request_rate_gets_429_with_retry_after(make_gateway):
    gw = make_gateway(workers=0, env={"VIDEOQUEUE_API_RATE_PER_S": "0.5",
                                      "VIDEOQUEUE_API_BURST": "2"})  # fmt: skip
    with gw.client("acme") as http:
        answers = [http.get("/v1/videos") for _ in range(4)]
    assert [a.status_code for a in answers[:2]] == [200, 200]
    limited = answers[-1]
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"


def test_health_and_readiness_and_a_503_when_redis_is_unreachable(make_gateway, tmp_path):
    gw = make_gateway(workers=0)
    assert httpx.get(f"{gw.url}/healthz").json() == {"ok": True}
    assert httpx.get(f"{gw.url}/readyz").status_code == 200
    assert httpx.get(f"{gw.url}/openapi.json").json()["paths"]["/v1/videos"]
    assert httpx.get(f"{gw.url}/docs").status_code == 200

    dead = {**gw.env, "VIDEOQUEUE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with http_service(dead, logfile=tmp_path / "dead.log") as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "redis_unavailable"
        key = next(iter(gw.keys.values()), "vq_whatever")
        down = httpx.get(f"{url}/v1/videos", headers={"Authorization": f"Bearer {key}"})
        assert down.status_code == 503 and down.headers["Retry-After"]


def test_serve_refuses_a_bad_setting_naming_it():
    import os
    import subprocess
    import sys

    env = {**os.environ, "VIDEOQUEUE_HTTP_URL_TTL_S": "-1", "COLUMNS": "200"}
    run = subprocess.run([sys.executable, "-m", "ops", "serve", "--port", str(free_port())],
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2
    assert "VIDEOQUEUE_HTTP_URL_TTL_S" in run.stderr and "Traceback" not in run.stderr


def test_the_readmes_node_fetch_client_completes_a_job_and_downloads_it(make_gateway):
    import os
    import subprocess
    from pathlib import Path

    gw = make_gateway()
    script = Path(__file__).with_name("fetch_client.mjs")
    env = {**os.environ, "VQ_URL": gw.url, "VQ_KEY": gw.key("acme")}
    run = subprocess.run(["node", str(script)], env=env, capture_output=True, text=True,
                         timeout=90)  # fmt: skip
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["status"] == "completed" and seen["type"] == "video/mp4"
    assert seen["bytes"] == get(seen["id"], settings=gw.pipeline.settings).output.size_bytes
    assert seen["error"].startswith("400 size: ")


def test_the_list_pages_oldest_first_with_order_asc_as_openais_sdk_asks(make_gateway):
    gw = make_gateway(workers=0)
    with OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key("acme"), max_retries=0) as sdk:
        ids = []
        for i in range(5):
            time.sleep(0.01)  # five creation times: one order
            ids.append(sdk.videos.create(prompt=f"cat {i}", model="sora", size="64x48").id)
        # The SDK follows `after` from page to page (limit 2: three pages).
        assert [v.id for v in sdk.videos.list(order="asc", limit=2)] == ids
        assert [v.id for v in sdk.videos.list(order="desc", limit=2)] == ids[::-1]
        page = sdk.videos.list(order="asc", limit=2, after=ids[1])
        assert [v.id for v in page.data] == ids[2:4] and page.has_more
        # A job created after the first page comes on the last one, oldest first.
        late = sdk.videos.create(prompt="late", model="sora", size="64x48").id
        assert [v.id for v in sdk.videos.list(order="asc", limit=2, after=ids[3])] == [ids[4], late]
    with gw.client("acme") as http:
        bad = http.get("/v1/videos", params={"order": "sideways"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "order"


def test_priority_and_deadline_s_go_through_json_and_form_bodies_and_bad_ones_are_named(
    make_gateway,
):
    gw = make_gateway(workers=0)
    s = gw.pipeline.settings
    with gw.client("acme") as http:
        made = http.post("/v1/videos", json={"prompt": "x", "priority": 7, "deadline_s": 90})
        assert made.status_code == 200, made.text
        record = get(made.json()["id"], settings=s)
        assert (record.priority, record.deadline_s) == (7, 90.0) and record.deadline_at
        form = http.post("/v1/videos", data={"prompt": "x", "priority": "-2", "deadline_s": "30.5"})
        assert form.status_code == 200, form.text
        record = get(form.json()["id"], settings=s)
        assert (record.priority, record.deadline_s) == (-2, 30.5)
        assert get(http.post("/v1/videos", json={"prompt": "x"}).json()["id"],
                   settings=s).priority == 0  # fmt: skip
        for body, param in [({"priority": "high"}, "priority"), ({"priority": 1.5}, "priority"),
                            ({"deadline_s": 0}, "deadline_s"), ({"deadline_s": "soon"},
                            "deadline_s")]:  # fmt: skip
            answer = http.post("/v1/videos", json={"prompt": "x", **body})
            assert answer.status_code == 400 and answer.json()["error"]["param"] == param, body
        bad_form = http.post("/v1/videos", data={"prompt": "x", "priority": "high"})
        assert bad_form.status_code == 400 and bad_form.json()["error"]["param"] == "priority"


async def _answers_everything(scope, receive, send) -> None:
    """An HTTP service that answers 200 to any request (/healthz too)."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def test_a_served_gateway_whose_picked_port_another_service_took_runs_on_another(
    make_pipeline, monkeypatch
):
    """A port picked free and taken before `videoqueue serve` binds it (by another service
    that answers /healthz too): it is served on another port, and the block never gets the
    URL of the service that took it."""
    p = make_pipeline(workers=0)
    with serve_in_thread(_answers_everything) as other_url:
        taken = int(other_url.rsplit(":", 1)[1])
        picks = iter([taken])
        monkeypatch.setattr("ops.stack.free_port", lambda host: next(picks, None) or free_port())
        with http_service(p.env) as url:
            assert url != other_url
            assert httpx.get(f"{url}/openapi.json").json()["info"]
