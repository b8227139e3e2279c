"""Each fault knob, and the sandbox's robustness against bad input, over real HTTP."""

from __future__ import annotations

import io
import json
import math
import struct
import time

import av
import httpx
import pytest

from ops.sandbox import Sandbox, SandboxConfig
from ops.sandbox.state import key_fingerprint
from ops.sandbox.vocabulary import NUMERIC_ERROR_CODES
from tests.e2e.sandbox_helpers import (
    API_KEY,
    OTHER_KEY,
    create,
    probe,
    raw_get,
    running,
    wait_terminal,
)
from worker.provider import kling_jwt


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


def test_a_fault_sequence_gives_each_request_of_its_route_its_fate_in_order():
    sequence = {"create": ["429", "lost", "hang", "pass"], "status": ["404"]}
    with running(fault_sequence=sequence, hang_s=60) as (sb, client):
        body = {"prompt": "x", "model": "sora", "size": "64x48", "duration": 2}
        refused = client.post("/v1/videos", json=body)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert sb.stats()["totals"]["tasks"] == 0  # refused before it took effect
        assert client.post("/v1/videos", json=body).status_code == 502
        with pytest.raises(httpx.ReadTimeout):  # taken, and its answer held
            client.post("/v1/videos", json=body, timeout=0.5)
        made = create(client)
        assert sb.stats()["totals"]["tasks"] == 3
        assert client.get(f"/v1/videos/{made['id']}").status_code == 404  # "not there yet"
        assert client.get(f"/v1/videos/{made['id']}").status_code == 200
        faults = sb.stats()["totals"]["faults"]
        assert {k: faults[k] for k in faults if k.startswith("sequence_")} == {
            "sequence_429": 1, "sequence_lost": 1, "sequence_hang": 1, "sequence_404": 1
        }  # fmt: skip
        sb.configure(fault_sequence={"create": ["429"]})  # setting it starts it again
        assert client.post("/v1/videos", json=body).status_code == 429


def test_kling_refuses_a_repeated_external_task_id_and_finds_the_task_by_it():
    key = "ak-sandbox:sk-sandbox-kling-secret"
    with running(dialect="kling", api_key=key) as (sb, client):
        headers = {"Authorization": f"Bearer {kling_jwt(key)}"}
        body = {"model_name": "sora", "prompt": "x", "duration": "2", "external_task_id": "j1"}
        first = client.post("/v1/videos/text2video", json=body, headers=headers)
        assert first.status_code == 200
        again = client.post("/v1/videos/text2video", json=body, headers=headers)
        assert again.status_code == 400 and again.json()["code"] == 1201
        found = client.get("/v1/videos/text2video", params={"external_task_id": "j1"},
                           headers=headers)  # fmt: skip
        assert found.json()["data"]["task_id"] == first.json()["data"]["task_id"]
        missing = client.get("/v1/videos/text2video", params={"external_task_id": "j2"},
                             headers=headers)  # fmt: skip
        assert missing.status_code == 404
        assert sb.stats()["totals"]["tasks"] == 1


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


def test_an_opaque_url_hides_its_expiry_and_still_expires_and_is_counted():
    with running(url_ttl_s=0, opaque_urls=True) as (sb, client):
        task = wait_terminal(client, create(client)["id"])
        url = httpx.URL(task["video"]["url"])
        assert set(url.params) == {"token"} and str(int(time.time())) not in str(url)
        assert httpx.get(url).json()["error"]["code"] == "url_expired"
        sb.configure(url_ttl_s=60)
        fresh = client.get(f"/v1/videos/{task['id']}").json()["video"]["url"]
        assert httpx.get(fresh).status_code == 200
        counted = sb.stats()["tasks"][task["id"]]
        assert (counted["file_urls"], counted["expired_downloads"], counted["downloads"]) == (
            2, 1, 1,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("how", "seen"),
    [("503", "503"), ("reset", "ReadError"), ("timeout", "ReadTimeout")],
)
def test_a_file_outage_refuses_downloads_for_its_time_then_serves_them(how, seen):
    with running() as (sb, client):
        task = wait_terminal(client, create(client)["id"])
        sb.configure(file_outage_s=1.5, file_outage=how)
        ended_at = time.monotonic() + 1.5
        for route in (task["video"]["url"], f"{client.base_url}/v1/videos/{task['id']}/content"):
            try:
                got = str(client.get(route, timeout=0.5).status_code)
            except httpx.HTTPError as e:
                got = type(e).__name__
            assert got == seen, route
        assert client.get(f"/v1/videos/{task['id']}").status_code == 200  # the API stays up
        time.sleep(max(0.0, ended_at - time.monotonic()) + 0.05)
        assert client.get(task["video"]["url"]).status_code == 200
        assert sb.stats()["totals"]["faults"][f"file_outage_{how}"] == 2


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


# --- malformed answers ---


def _status_paths(task_id: str) -> list[str]:
    return [f"/v1/videos/{task_id}", f"/v1/video/query?id={task_id}"]


def _refuse_constant(token: str) -> float:
    raise ValueError(f"{token} is not JSON")  # what JSON.parse, Go and orjson do


@pytest.mark.parametrize("value", ["soon", "99999999999", "-5", "Wed, 99 Foo"])
def test_retry_after_is_sent_verbatim_on_5xx_429_and_successful_status_answers(value):
    with running(retry_after=value, error_rate=1.0, error_routes=["create"]) as (sb, client):
        refused = [client.post("/v1/videos", json={"prompt": "x"}) for _ in range(10)]
        assert {r.status_code for r in refused} == {500, 502, 503}  # 503's own "1" replaced
        assert {r.headers["retry-after"] for r in refused} == {value}
        sb.configure(error_rate=0.0)
        made = client.post("/v1/videos", json={"prompt": "x", "size": "64x48"})
        assert made.status_code == 200 and "retry-after" not in made.headers
        for path in _status_paths(made.json()["id"]):
            answer = client.get(path)
            assert answer.status_code == 200 and answer.headers["retry-after"] == value
        assert "retry-after" not in client.get("/v1/videos/nope").headers  # a 404
        sb.configure(rpm_limit=1)
        assert client.get(f"/v1/videos/{made.json()['id']}").status_code == 200
        limited = client.get(f"/v1/videos/{made.json()['id']}")
        assert limited.status_code == 429 and limited.headers["retry-after"] == value


def test_status_answers_are_well_formed_by_default():
    with running(fail_rate=0.5) as (_, client):
        for _ in range(4):
            task = create(client)
            for path in _status_paths(task["id"]):
                answer = client.get(path)
                assert answer.headers["content-type"] == "application/json"
                assert "retry-after" not in answer.headers
                body = json.loads(answer.text, parse_constant=_refuse_constant)
                assert isinstance(body["status"], str) and isinstance(body["progress"], int)
            done = wait_terminal(client, task["id"])
            url = done.get("video", {}).get("url")
            assert isinstance(url, str) or isinstance(done["error"]["code"], str)


def test_html_rate_answers_status_queries_200_with_an_html_page():
    with running() as (sb, client):
        task_id = wait_terminal(client, create(client)["id"])["id"]
        assert client.post("/_sandbox/config", json={"html_rate": 1.0}).status_code == 200
        for path in _status_paths(task_id):
            answer = client.get(path)
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/html")
            assert answer.text.startswith("<!DOCTYPE html>") and task_id not in answer.text
            with pytest.raises(json.JSONDecodeError):
                answer.json()
        assert sb.stats()["totals"]["faults"] == {"html": 2}


@pytest.mark.parametrize("flavor", ["router", "openai"])
def test_non_json_rate_answers_status_queries_200_with_truncated_json(flavor):
    with running(flavor=flavor) as (sb, client):
        task_id = wait_terminal(client, create(client)["id"])["id"]
        sb.configure(non_json_rate=1.0)
        answer = client.get(f"/v1/videos/{task_id}")
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        assert answer.text == f'{{"id":"{task_id}","object":"video","stat'
        with pytest.raises(json.JSONDecodeError):
            answer.json()
        assert sb.stats()["totals"]["faults"] == {"non_json": 1}


@pytest.mark.parametrize("flavor", ["router", "openai"])
def test_missing_status_rate_drops_only_the_status_field(flavor):
    with running(flavor=flavor) as (sb, client):
        task_id = wait_terminal(client, create(client)["id"])["id"]
        whole = [client.get(path).json() for path in _status_paths(task_id)]
        sb.configure(missing_status_rate=1.0)
        for path, expected in zip(_status_paths(task_id), whole, strict=True):
            answer = client.get(path).json()
            assert "status" in expected and "status" not in answer
            assert answer == {k: v for k, v in expected.items() if k != "status"}
        assert sb.stats()["totals"]["faults"] == {"missing_status": 2}


@pytest.mark.parametrize("flavor", ["router", "openai"])
def test_nan_progress_rate_sends_the_token_nan(flavor):
    with running(flavor=flavor, nan_progress_rate=1.0) as (sb, client):
        task = create(client)
        answer = client.get(f"/v1/videos/{task['id']}")
        assert '"progress":NaN' in answer.text
        # Python's json (and so httpx) takes it, as a float that breaks any arithmetic on it.
        assert math.isnan(answer.json()["progress"]) and answer.json()["status"]
        with pytest.raises(ValueError, match="NaN is not JSON"):
            json.loads(answer.text, parse_constant=_refuse_constant)
        assert sb.stats()["totals"]["faults"] == {"nan_progress": 1}


def test_malformed_answers_are_reproducible_from_the_seed():
    def shapes(seed: int) -> list[str]:
        knobs = {"html_rate": 0.2, "non_json_rate": 0.2, "missing_status_rate": 0.3}
        with running(seed=seed, **knobs) as (_, client):
            task_id = create(client)["id"]
            answers = [client.get(f"/v1/videos/{task_id}") for _ in range(30)]
        return [
            "html" if a.text.startswith("<") else "cut" if a.text.endswith("stat") else
            "nostatus" if "status" not in a.json() else "ok"
            for a in answers
        ]  # fmt: skip

    assert shapes(3) == shapes(3) != shapes(4)
    assert {"html", "cut", "nostatus", "ok"} == set(shapes(3))


@pytest.mark.parametrize("flavor", ["router", "openai"])
def test_numeric_error_code_reports_a_failed_tasks_code_as_a_number(flavor):
    with running(flavor=flavor, fail_rate=1.0, numeric_error_code=True) as (sb, client):
        task_id = create(client)["id"]
        numeric = wait_terminal(client, task_id)["error"]
        assert type(numeric["code"]) is int and isinstance(numeric["message"], str)
        sb.configure(numeric_error_code=False)
        word = wait_terminal(client, task_id)["error"]
        assert isinstance(word["code"], str)
        assert NUMERIC_ERROR_CODES[word["code"]] == numeric["code"]
        assert word["message"] == numeric["message"]


def test_url_as_list_gives_every_file_url_as_a_list_of_one_string():
    with running(url_as_list=True, vocabulary="alt") as (_, client):
        task = wait_terminal(client, create(client)["id"])
        urls = task["video"]["url"]
        assert isinstance(urls, list) and len(urls) == 1 and isinstance(urls[0], str)
        assert task["video_url"] == urls  # the alt vocabulary's top-level copy
        unified = client.get(f"/v1/video/query?id={task['id']}").json()
        assert unified["video_url"] == urls
        assert probe(httpx.get(urls[0]).content) == (64, 48, 2.0)


def test_url_as_list_adds_nothing_to_the_openai_flavor():
    with running(flavor="openai") as (sb, client):
        task_id = wait_terminal(client, create(client)["id"])["id"]
        plain = client.get(f"/v1/videos/{task_id}").json()
        sb.configure(url_as_list=True)
        assert client.get(f"/v1/videos/{task_id}").json() == plain
        assert client.get(f"/v1/videos/{task_id}/content").status_code == 200


# --- broken files ---


@pytest.mark.parametrize("flavor", ["router", "openai"])
def test_broken_moov_serves_a_file_that_starts_with_ftyp_but_does_not_open(flavor):
    with running(flavor=flavor) as (sb, client):
        task = wait_terminal(client, create(client)["id"])
        if flavor == "router":
            url = task["video"]["url"]
            fetch = lambda: httpx.get(url).content  # noqa: E731
        else:
            fetch = lambda: client.get(f"/v1/videos/{task['id']}/content").content  # noqa: E731
        good = fetch()
        sb.configure(broken_moov_rate=1.0)
        broken = fetch()
        ftyp_size, first_box = struct.unpack(">I4s", broken[:8])
        assert first_box == b"ftyp" and broken[:ftyp_size] == good[:ftyp_size]
        assert len(broken) == len(good) and broken != good
        with pytest.raises(av.error.InvalidDataError):
            av.open(io.BytesIO(broken))
        assert probe(good) == (64, 48, 2.0)
        assert sb.stats()["totals"]["faults"] == {"broken_moov": 1}


def test_broken_moov_is_drawn_per_download_so_a_retry_can_get_a_good_file():
    with running(broken_moov_rate=0.5) as (sb, client):
        url = wait_terminal(client, create(client)["id"])["video"]["url"]
        opened = []
        for _ in range(12):
            try:
                opened.append(probe(httpx.get(url).content) == (64, 48, 2.0))
            except av.error.InvalidDataError:
                opened.append(False)
        assert True in opened and False in opened
        assert sb.stats()["totals"]["faults"]["broken_moov"] == opened.count(False)


def test_short_content_length_declares_half_of_the_body_really_sent():
    with running(short_content_length_rate=1.0) as (sb, client):
        url = wait_terminal(client, create(client)["id"])["video"]["url"]
        status, headers, body = raw_get(url)
        declared = int(headers["content-length"])
        assert status == 200 and headers["connection"] == "close"
        assert declared == len(body) // 2 and probe(body) == (64, 48, 2.0)  # all of it came
        # An HTTP client believes the header: a 200 with half a file, and no error at all.
        short = httpx.get(url)
        assert short.status_code == 200 and short.content == body[:declared]
        assert not _playable(short.content)  # cut inside its boxes: nothing to play
        status, headers, part = raw_get(url, {"Range": "bytes=100-199"})
        assert status == 206 and headers["content-length"] == "50" and part == body[100:200]
        assert sb.stats()["totals"]["faults"] == {"short_content_length": 3}
        sb.configure(short_content_length_rate=0.0)
        _, headers, honest = raw_get(url)
        assert int(headers["content-length"]) == len(honest) == len(body)


def _playable(data: bytes) -> bool:
    """Whether data opens as a video with a stream to decode (half an MP4 either fails to
    open or opens with none, depending on where its cut falls)."""
    try:
        with av.open(io.BytesIO(data)) as container:
            return bool(container.streams.video)
    except av.error.FFmpegError:
        return False


def test_slow_routes_slow_only_the_routes_named():
    with running(slow_rate=1.0, slow_s=1.0, slow_routes=["status"]) as (sb, client):
        started = time.monotonic()
        task = create(client)
        assert time.monotonic() - started < 0.8  # the create is not slowed
        started = time.monotonic()
        client.get(f"/v1/videos/{task['id']}")
        assert time.monotonic() - started >= 1.0
        assert sb.stats()["totals"]["faults"]["slow"] == 1


def test_file_stream_s_spreads_a_download_over_that_many_seconds():
    with running(file_stream_s=1.5, file_padding_bytes=4 << 20) as (_, client):
        task = wait_terminal(client, create(client)["id"])
        started = time.monotonic()
        with client.stream("GET", f"/v1/videos/{task['id']}/content") as response:
            sizes = [len(c) for c in response.iter_bytes()]
        assert response.status_code == 200 and sum(sizes) > 4 << 20
        assert time.monotonic() - started >= 1.4
