"""Each fault knob, and the sandbox's robustness against bad input, over real HTTP."""

from __future__ import annotations

import time

import httpx
import pytest

from ops.sandbox import Sandbox, SandboxConfig
from ops.sandbox.state import key_fingerprint
from tests.e2e.sandbox_helpers import API_KEY, OTHER_KEY, create, probe, running, wait_terminal


def test_rpm_limit_answers_429_with_retry_after_per_key():
    with running(rpm_limit=3) as (sb, client):
        codes = [client.get("/v1/videos/x").status_code for _ in range(4)]
        assert codes == [404, 404, 404, 429]
        limited = client.get("/v1/videos/x")
        assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        other = client.get("/v1/videos/x", headers={"Authorization": f"Bearer {OTHER_KEY}"})
        assert other.status_code == 404
        assert sb.stats()["totals"]["rate_limited"] == {"rpm": 2}


def test_max_concurrent_rejects_creates_until_a_generation_finishes():
    with running(max_concurrent=2, fast=False, time_scale=0.03, jitter=0) as (sb, client):
        first = create(client, duration=1)
        create(client, duration=1)
        refused = client.post("/v1/videos", json={"prompt": "third", "size": "64x48"})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert int(refused.headers["retry-after"]) >= 1
        # Another key has its own slots.
        other = client.post(
            "/v1/videos", json={"prompt": "x"}, headers={"Authorization": f"Bearer {OTHER_KEY}"}
        )
        assert other.status_code == 200
        wait_terminal(client, first["id"])
        create(client, duration=1)
        stats = sb.stats()
        assert stats["keys"][key_fingerprint(API_KEY)]["max_concurrent"] == 2
        assert stats["totals"]["rate_limited"] == {"concurrency": 1}


def test_an_idempotent_replay_is_answered_even_at_the_concurrency_cap():
    with running(max_concurrent=1, stuck_rate=1.0) as (sb, client):
        headers = {"Idempotency-Key": "k1"}
        a = client.post("/v1/videos", json={"prompt": "x"}, headers=headers)
        b = client.post("/v1/videos", json={"prompt": "x"}, headers=headers)
        assert a.status_code == b.status_code == 200 and a.json()["id"] == b.json()["id"]
        assert client.post("/v1/videos", json={"prompt": "y"}).status_code == 429
        assert sb.stats()["totals"]["tasks"] == 1


def test_error_rate_answers_5xx_on_the_configured_routes_only():
    with running(error_rate=1.0, error_routes=["create"]) as (sb, client):
        codes = {client.post("/v1/videos", json={"prompt": "x"}).status_code for _ in range(20)}
        assert codes <= {500, 502, 503} and len(codes) >= 2
        assert client.get("/v1/videos/x").status_code == 404  # status route untouched
        assert sb.stats()["totals"]["tasks"] == 0  # refused before doing anything
        assert sb.stats()["totals"]["faults"]["error"] == 20


def test_a_503_carries_retry_after():
    with running(error_rate=1.0, error_codes=[503]) as (_, client):
        response = client.get("/v1/videos/x")
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["type"] == "server_error"


def test_faults_are_reproducible_from_the_seed():
    def codes(seed: int) -> list[int]:
        with running(seed=seed, error_rate=0.5) as (_, client):
            return [client.get("/v1/videos/x").status_code for _ in range(30)]

    assert codes(7) == codes(7)
    assert codes(7) != codes(8)
    assert {404} < set(codes(7))


def test_a_slow_answer_comes_after_the_create_took_effect():
    with running(slow_rate=1.0, slow_s=0.5) as (sb, client):
        with pytest.raises(httpx.ReadTimeout):
            client.post(
                "/v1/videos", json={"prompt": "x"}, headers={"Idempotency-Key": "s"}, timeout=0.1
            )
        assert sb.stats()["totals"]["tasks"] == 1
        started = time.monotonic()
        again = client.post("/v1/videos", json={"prompt": "x"}, headers={"Idempotency-Key": "s"})
        assert time.monotonic() - started >= 0.5
        assert again.status_code == 200 and sb.stats()["totals"]["tasks"] == 1
        assert sb.stats()["totals"]["faults"]["slow"] == 2


def test_a_hanging_connection_outlasts_the_clients_timeout_and_the_sandbox_stays_up():
    with running(hang_rate=1.0, hang_s=60) as (sb, client):
        with pytest.raises(httpx.ReadTimeout):
            client.get("/v1/videos/x", timeout=0.3)
        sb.configure(hang_rate=0.0)
        assert client.get("/v1/videos/x").status_code == 404
        assert sb.stats()["totals"]["faults"]["hang"] == 1


def test_a_hang_that_ends_before_the_client_gives_up_is_a_504():
    with running(hang_rate=1.0, hang_s=0.2) as (_, client):
        response = client.get("/v1/videos/x")
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "gateway_timeout"


def test_a_lost_create_answer_is_a_502_but_the_task_exists_and_a_retry_finds_it():
    with running(lost_create_rate=1.0) as (sb, client):
        headers = {"Idempotency-Key": "lost"}
        lost = client.post("/v1/videos", json={"prompt": "x"}, headers=headers)
        assert lost.status_code == 502
        retry = client.post("/v1/videos", json={"prompt": "x"}, headers=headers)
        assert retry.status_code == 200
        assert list(sb.stats()["tasks"]) == [retry.json()["id"]]


@pytest.mark.parametrize("flavor", ["router", "openai"])
def test_fail_rate_ends_tasks_failed_with_a_message(flavor):
    with running(fail_rate=1.0, flavor=flavor) as (sb, client):
        done = wait_terminal(client, create(client, model="sora")["id"])
        assert done["status"] == "failed"
        assert done["error"]["code"] and done["error"]["message"]
        assert "video" not in done
        assert list(sb.stats()["tasks"].values())[0]["ready_at"] is None


def test_stuck_tasks_stay_queued_and_hold_their_slot():
    with running(stuck_rate=1.0, flavor="openai", max_concurrent=1) as (sb, client):
        task = create(client, model="sora")
        time.sleep(0.3)  # many times a fast task's whole generation time
        body = client.get(f"/v1/videos/{task['id']}")
        assert body.json()["status"] == "queued"
        assert body.headers["openai-poll-after-ms"] == "5000"
        assert client.post("/v1/videos", json={"prompt": "x"}).status_code == 429
        assert client.get(f"/v1/videos/{task['id']}/content").status_code == 400


def test_an_expired_url_is_403_and_a_fresh_query_gives_a_working_one():
    with running(url_ttl_s=0) as (sb, client):
        task = wait_terminal(client, create(client)["id"])
        expired = httpx.get(task["video"]["url"])
        assert expired.status_code == 403 and expired.json()["error"]["code"] == "url_expired"
        sb.configure(url_ttl_s=60)
        fresh = client.get(f"/v1/videos/{task['id']}").json()["video"]["url"]
        assert fresh != task["video"]["url"]
        assert httpx.get(fresh).status_code == 200
        forged = fresh.replace("sig=", "sig=0")
        assert httpx.get(forged).json()["error"]["code"] == "invalid_signature"


def test_a_truncated_download_sends_fewer_bytes_than_content_length_then_closes():
    with running(truncate_rate=1.0) as (sb, client):
        url = wait_terminal(client, create(client)["id"])["video"]["url"]
        received = 0
        with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as response:
            promised = int(response.headers["content-length"])
            for chunk in response.iter_bytes():
                received += len(chunk)
        assert 0 < received < promised
        assert sb.stats()["totals"]["faults"]["truncate"] == 1
        sb.configure(truncate_rate=0.0)
        assert len(httpx.get(url).content) == promised


def test_file_urls_redirect_to_another_origin_and_a_leaked_key_is_counted():
    with running() as (sb, client):
        cdn = str(client.base_url).replace("127.0.0.1", "localhost")
        sb.configure(cdn_base_url=cdn)
        url = wait_terminal(client, create(client)["id"])["video"]["url"]
        assert url.startswith(str(client.base_url))
        hop = httpx.get(url)
        assert hop.status_code == 302 and hop.headers["location"].startswith(cdn + "/cdn/")
        # httpx drops the Authorization header on a cross-origin redirect: no leak.
        followed = client.get(url, follow_redirects=True)
        assert followed.status_code == 200 and probe(followed.content) == (64, 48, 2.0)
        assert sb.stats()["totals"]["file_downloads_with_auth"] == 0
        client.get(hop.headers["location"])  # a client that sends its key to the CDN
        totals = sb.stats()["totals"]
        assert totals["file_downloads_with_auth"] == 1 and totals["redirects"] == 2
        assert totals["responses_by_code"]["302"] == 2


def test_padding_grows_the_file_and_ranges_are_served():
    with running() as (sb, client):
        url = wait_terminal(client, create(client)["id"])["video"]["url"]
        plain = httpx.get(url).content
        sb.configure(file_padding_bytes=3 << 20)
        padded = httpx.get(url).content
        assert len(padded) == len(plain) + (3 << 20)
        clip_end = plain.index(b"videoqueue-sandbox task=") - 8  # the free box's header
        assert padded[:clip_end] == plain[:clip_end] and padded.endswith(bytes(1 << 20))
        assert probe(padded) == probe(plain)
        part = httpx.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == padded[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(padded)}"
        assert httpx.get(url, headers={"Range": f"bytes={len(padded)}-"}).status_code == 416


def test_bad_input_gets_clear_errors_and_the_sandbox_stays_up():
    with running(max_upload_bytes=64 << 10) as (sb, client):
        malformed = client.post(
            "/v1/videos", content=b'{"prompt": ', headers={"Content-Type": "application/json"}
        )
        assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "invalid_json"
        assert client.post("/v1/videos", json=["a", "list"]).status_code == 400
        huge = client.post("/v1/videos", json={"prompt": "x" * (2 << 20)})
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
        big_upload = client.post(
            "/v1/videos",
            data={"prompt": "x"},
            files={"input_reference": ("a.png", b"\0" * (100 << 10), "image/png")},
        )
        assert big_upload.status_code == 413
        unknown = client.get("/v2/nothing")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
        assert client.put("/v1/videos").status_code == 405
        assert client.post("/_sandbox/config", content=b"nope").status_code == 400
        assert httpx.get(f"{client.base_url}/files/whatever.mp4").status_code == 403
        # Still up and serving.
        assert wait_terminal(client, create(client)["id"])["status"] == "completed"
        assert sb.stats()["totals"]["responses_by_code"]["413"] == 2


def test_a_sandbox_can_be_served_twice():
    sb = Sandbox(SandboxConfig(api_key=API_KEY, fast=True))
    for _ in range(2):
        with sb.serve() as url:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            assert httpx.post(f"{url}/v1/videos", json={"prompt": "x"}, headers=headers).is_success
    assert sb.stats()["totals"]["tasks"] == 2
    sb.close()
