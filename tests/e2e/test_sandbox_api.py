"""The sandbox's endpoints over real HTTP: both flavors, characters, files, idempotency, admin."""

from __future__ import annotations

import httpx
import pytest

from ops.sandbox.state import key_fingerprint
from tests.e2e.sandbox_helpers import API_KEY, OTHER_KEY, create, probe, running, wait_terminal
from tests.unit.images import png


def test_router_video_goes_from_processing_to_completed_with_a_playable_file():
    with running() as (sb, client):
        task = create(client, size="96x64", duration=3)
        assert task["status"] == "processing" and task["id"].startswith("sora_task_")
        assert isinstance(task["created_at"], int)
        done = wait_terminal(client, task["id"])
        assert done["status"] == "completed"
        video = done["video"]
        assert (video["width"], video["height"], video["duration"]) == (96, 64, 3)
        data = httpx.get(video["url"]).content  # no bearer: the URL is signed
        assert probe(data) == (96, 64, 3.0)

        stats = sb.stats()["tasks"][task["id"]]
        assert stats["creates"] == 1 and stats["downloads"] == 1
        assert stats["status_queries"] >= 1 and stats["status"] == "completed"
        assert stats["ready_at"] >= stats["created_at"]


def test_unified_create_is_queried_with_a_top_level_video_url():
    with running() as (_, client):
        task = create(client, "/v1/video/create", size=None, aspect_ratio="9:16", duration=2)
        done = wait_terminal(client, task["id"], path=f"/v1/video/query?id={task['id']}")
        assert done["status"] == "completed" and "video" not in done
        assert probe(httpx.get(done["video_url"]).content) == (720, 1280, 2.0)
        # The same task is also visible on the OpenAI-format route.
        assert client.get(f"/v1/videos/{task['id']}").json()["video"]["width"] == 720

        missing = client.get("/v1/video/query?id=nope")
        assert missing.status_code == 404 and missing.json()["code"] == "task_not_exist"
        assert client.get("/v1/video/query").status_code == 400


def test_a_storyboard_lasts_the_sum_of_its_scenes():
    with running() as (_, client):
        scenes = [{"prompt": "sunrise", "duration": 1}, {"prompt": "village", "duration": 2}]
        task = create(client, prompt=None, duration=None, storyboard=scenes)
        done = wait_terminal(client, task["id"])
        assert done["video"]["duration"] == 3
        assert probe(httpx.get(done["video"]["url"]).content)[2] == 3.0


def test_pro_model_and_image_to_video_are_accepted():
    with running() as (sb, client):
        task = create(client, model="sora-pro", image_url="https://example.com/p.jpg")
        assert wait_terminal(client, task["id"])["status"] == "completed"
        assert sb.stats()["tasks"][task["id"]]["model"] == "sora-pro"


def test_characters_are_created_fetched_and_usable_by_their_key_only():
    with running() as (_, client):
        made = client.post(
            "/sora/v1/characters",
            json={"name": "Luna", "description": "silver hair",
                  "reference_images": ["https://example.com/luna.jpg"]},
        )  # fmt: skip
        assert made.status_code == 200
        char = made.json()
        assert char["id"].startswith("char_") and char["name"] == "Luna"
        assert client.get(f"/sora/v1/characters/{char['id']}").json() == char
        task = create(client, characters=[char["id"]])
        assert wait_terminal(client, task["id"])["status"] == "completed"

        other = {"Authorization": f"Bearer {OTHER_KEY}"}
        assert client.get(f"/sora/v1/characters/{char['id']}", headers=other).status_code == 404
        refused = client.post(
            "/v1/videos", headers=other, json={"prompt": "x", "characters": [char["id"]]}
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "unknown_character"
        bad = client.post("/sora/v1/characters", json={"description": "no name"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"


def test_every_tasks_file_has_different_bytes_yet_the_same_shape():
    with running() as (_, client):
        urls = [wait_terminal(client, create(client)["id"])["video"]["url"] for _ in range(2)]
        first, second = (httpx.get(u).content for u in urls)
        assert first != second
        assert probe(first) == probe(second) == (64, 48, 2.0)


def test_the_same_idempotency_key_gives_the_same_task_and_never_a_second():
    with running() as (sb, client):
        body = {"prompt": "a cat", "size": "64x48", "duration": 2}
        a = client.post("/v1/videos", json=body, headers={"Idempotency-Key": "job-1"})
        b = client.post("/v1/videos", json=body, headers={"Idempotency-Key": "job-1"})
        assert a.status_code == b.status_code == 200
        assert a.json()["id"] == b.json()["id"]
        assert b.headers["idempotent-replayed"] == "true"
        # Another API key's identical Idempotency-Key is a different client's request.
        c = client.post(
            "/v1/videos",
            json=body,
            headers={"Idempotency-Key": "job-1", "Authorization": f"Bearer {OTHER_KEY}"},
        )
        assert c.json()["id"] != a.json()["id"]
        totals = sb.stats()["totals"]
        assert (totals["tasks"], totals["creates"], totals["idempotent_replays"]) == (2, 3, 1)
        assert sb.stats()["tasks"][a.json()["id"]]["creates"] == 2


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_api_key"), ({"Authorization": "Bearer sk-wrong"}, "invalid_api_key"),
     ({"Authorization": "Basic abc"}, "missing_api_key")],
)  # fmt: skip
def test_a_missing_or_wrong_key_gets_401_in_the_providers_shape(headers, code):
    with running() as (sb, client):
        routes = [("POST", "/v1/videos"), ("GET", "/v1/videos/x"),
                  ("POST", "/sora/v1/characters"), ("GET", "/v1/video/query")]  # fmt: skip
        for method, path in routes:
            response = httpx.request(method, f"{client.base_url}{path}", headers=headers, json={})
            assert response.status_code == 401
            error = response.json()["error"]
            assert error["code"] == code and error["type"] and error["message"]
        assert sb.stats()["totals"]["tasks"] == 0


def test_a_task_is_invisible_to_another_key_and_can_be_deleted():
    with running() as (sb, client):
        task = create(client)
        other = {"Authorization": f"Bearer {OTHER_KEY}"}
        assert client.get(f"/v1/videos/{task['id']}", headers=other).status_code == 404
        deleted = client.delete(f"/v1/videos/{task['id']}")
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert client.get(f"/v1/videos/{task['id']}").status_code == 404
        assert sb.stats()["totals"]["deleted"] == 1


def test_openai_flavor_answers_video_objects_and_serves_content_with_the_key():
    # Generations of about a second: the first query must find it still running, however
    # busy the host (fast mode alone ends it in ~50 ms).
    with running(flavor="openai", time_scale=20) as (_, client):
        made = client.post("/v1/videos", json={"prompt": "a cat", "model": "sora-2"})
        video = made.json()
        assert video["object"] == "video" and video["status"] == "queued"
        assert (video["model"], video["seconds"], video["size"]) == ("sora-2", "4", "720x1280")
        assert video["progress"] == 0 and video["error"] is None and video["completed_at"] is None

        first = client.get(f"/v1/videos/{video['id']}")
        assert int(first.headers["openai-poll-after-ms"]) >= 0
        done = wait_terminal(client, video["id"])
        assert done["status"] == "completed" and done["progress"] == 100
        assert done["expires_at"] > done["completed_at"] >= done["created_at"]
        assert "video" not in done and "video_url" not in done

        content = client.get(f"/v1/videos/{video['id']}/content")
        assert content.headers["content-type"] == "video/mp4"
        assert probe(content.content) == (720, 1280, 4.0)
        assert httpx.get(f"{client.base_url}/v1/videos/{video['id']}/content").status_code == 401
        thumb = client.get(f"/v1/videos/{video['id']}/content?variant=thumbnail")
        assert thumb.status_code == 400


def test_openai_flavor_accepts_multipart_and_the_routers_fields():
    with running(flavor="openai") as (_, client):
        form = client.post(
            "/v1/videos",
            data={"prompt": "a cat", "model": "sora-2-pro", "seconds": "8", "size": "1280x720"},
            files={"input_reference": ("ref.png", png(1280, 720), "image/png")},
        )
        assert form.status_code == 200, form.text
        assert (form.json()["seconds"], form.json()["size"]) == ("8", "1280x720")

        routerish = create(client, size="64x48", duration=3,
                           image_url="https://example.com/a.jpg")  # fmt: skip
        assert (routerish["seconds"], routerish["size"], routerish["model"]) == (
            "3",
            "64x48",
            "sora",
        )
        scenes = [{"prompt": "a", "duration": 4}, {"prompt": "b", "duration": 4}]
        board = create(client, model="sora-2", size=None, duration=None, prompt=None,
                       storyboard=scenes)  # fmt: skip
        assert board["seconds"] == "8" and board["prompt"] == "a / b"


def test_the_router_flavor_also_serves_openai_models_and_the_content_route():
    with running() as (_, client):
        task = create(client, model="sora-2", size="1280x720", duration=None, seconds="4")
        assert wait_terminal(client, task["id"])["video"]["duration"] == 4
        assert probe(client.get(f"/v1/videos/{task['id']}/content").content)[:2] == (1280, 720)


@pytest.mark.parametrize(
    ("vocabulary", "early", "done_word"),
    [("alt", {"queued", "running"}, "succeeded"),
     ("upper", {"IN_QUEUE", "IN_PROGRESS"}, "COMPLETED")],
)  # fmt: skip
def test_other_routers_status_words(vocabulary, early, done_word):
    with running(vocabulary=vocabulary, fast=False, time_scale=0.02) as (_, client):
        task = create(client)
        assert task["status"] in early
        done = wait_terminal(client, task["id"])
        assert done["status"] == done_word
        if vocabulary == "alt":
            assert done["video_url"] == done["video"]["url"]


def test_admin_routes_read_patch_and_reset_without_auth():
    with running() as (sb, client):
        create(client)
        plain = httpx.Client(base_url=str(client.base_url))
        stats = plain.get("/_sandbox/stats").json()
        assert stats == sb.stats() | {"tasks": stats["tasks"]}
        assert (
            stats["totals"]["tasks"] == 1 and stats["keys"][key_fingerprint(API_KEY)]["tasks"] == 1
        )
        assert "tasks" not in plain.get("/_sandbox/stats?tasks=0").json()

        patched = plain.post("/_sandbox/config", json={"error_rate": 0.25})
        assert patched.status_code == 200 and sb.config.error_rate == 0.25
        assert plain.post("/_sandbox/config", json={"no_such_knob": 1}).status_code == 400
        assert plain.post("/_sandbox/config", json={"error_rate": 2}).status_code == 400
        assert sb.config.error_rate == 0.25

        assert plain.post("/_sandbox/reset").status_code == 200
        assert sb.stats()["totals"]["creates"] == 0 and len(sb.stats()["tasks"]) == 1
        plain.post("/_sandbox/reset", json={"tasks": True})
        assert sb.stats()["tasks"] == {}
        sb.configure(admin=False)
        assert plain.get("/_sandbox/stats").status_code == 404
        plain.close()


def test_stats_count_responses_by_code_and_requests_per_key():
    with running() as (sb, client):
        create(client)
        client.get("/v1/videos/nope")
        httpx.get(f"{client.base_url}/v1/videos/x")
        totals = sb.stats()["totals"]
        assert totals["responses_by_code"] == {"200": 1, "401": 1, "404": 1}
        assert (
            totals["requests"] == 3
            and sb.stats()["keys"][key_fingerprint(API_KEY)]["requests"] == 2
        )
