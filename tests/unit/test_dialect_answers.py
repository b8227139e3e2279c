"""Each shipped dialect reads the answers its provider documents (examples from the providers'
pages, as quoted in the dialect files' sources), and builds the body its provider documents."""

from __future__ import annotations

import json

import httpx
import pytest

from producer.core.errors import PermanentError, RetryableError
from producer.core.requests import VideoRequest
from producer.core.settings import ApiFormat, Settings
from worker.provider import ProviderClient, TaskState, client_for

URL = "https://cdn.example/v.mp4"

# dialect -> (a documented finished answer, a documented failed answer, the failure's reason)
DOCUMENTED = {
    "replicate": (
        {"id": "gm3q", "status": "succeeded", "output": URL, "error": None},
        {"id": "gm3q", "status": "failed", "output": None, "error": "CUDA out of memory"},
        "CUDA out of memory",
    ),
    "runway": (
        {"id": "2272", "status": "SUCCEEDED", "createdAt": "2024-11-30T07:06:07.912Z",
         "output": [URL]},
        {"id": "17f2", "status": "FAILED", "failure": "moderated",
         "failureCode": "SAFETY.INPUT.TEXT"},
        "moderated",
    ),
    "kling": (
        {"code": 0, "message": "", "request_id": "73f7", "data": {
            "task_id": "8672", "task_status": "succeed", "task_status_msg": "",
            "task_result": {"videos": [{"id": "", "url": URL, "duration": "5.042"}]}}},
        {"code": 0, "message": "SUCCEED", "request_id": "r", "data": {
            "task_id": "8672", "task_status": "failed", "task_status_msg": "content risk"}},
        "content risk",
    ),
    "luma": (
        {"id": "d196", "state": "completed", "failure_reason": None,
         "assets": {"video": URL, "image": "https://cdn.example/t.jpg"}},
        {"id": "d196", "state": "failed", "failure_reason": "Contains blacklisted words",
         "assets": None},
        "Contains blacklisted words",
    ),
    "seedance": (
        {"id": "0217", "status": "succeeded", "content": {"video_url": URL},
         "usage": {"completion_tokens": 108900}},
        {"id": "cgt-1", "status": "failed",
         "error": {"code": "OutputVideoSensitiveContentDetected", "message": "sensitive"}},
        "sensitive",
    ),
    "wan": (
        {"request_id": "4c87", "output": {"task_id": "4363", "task_status": "SUCCEEDED",
                                          "video_url": URL}, "usage": {"video_duration": 5}},
        {"request_id": "r", "output": {"task_id": "4363", "task_status": "FAILED",
                                       "code": "DataInspectionFailed", "message": "inspection"}},
        "inspection",
    ),
    "openrouter": (
        {"id": "job-abc123", "polling_url": "/api/v1/videos/job-abc123", "status": "completed",
         "unsigned_urls": [URL], "usage": {"cost": 0.5}},
        {"id": "job-abc123", "status": "failed", "error": "provider refused"},
        "provider refused",
    ),
    "veo": (
        {"name": "models/veo-3.1/operations/mg3p", "done": True, "response": {
            "generateVideoResponse": {"generatedSamples": [{"video": {"uri": URL}}]}}},
        {"name": "models/veo-3.1/operations/mg3p", "done": True,
         "error": {"code": 3, "message": "bad image"}},
        "bad image",
    ),
}  # fmt: skip


def _client(dialect: str, answer) -> tuple[ProviderClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    settings = Settings(api_dialect=dialect, api_base_url="https://api.example", api_key="k:s")
    return client_for(settings, http=httpx.Client(transport=httpx.MockTransport(handler))), seen


@pytest.mark.parametrize("dialect", DOCUMENTED)
@pytest.mark.parametrize("which", ["finished", "failed"])
def test_a_documented_answer_gives_the_file_or_the_reason(dialect, which):
    done, failed, reason = DOCUMENTED[dialect]
    body = done if which == "finished" else failed
    client, _ = _client(dialect, lambda r: httpx.Response(200, json=body))
    task = client.get("t1", ApiFormat.OPENAI)
    if which == "finished":
        assert (task.state, task.video_url) == (TaskState.DONE, URL)
    else:
        assert (task.state, task.error_message) == (TaskState.FAILED, reason)


def test_minimax_fetches_the_file_url_with_a_second_call():
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/files/retrieve":
            return httpx.Response(200, json={"file": {"file_id": "1768", "download_url": URL},
                                             "base_resp": {"status_code": 0}})  # fmt: skip
        ok = {"status_code": 0, "status_msg": "success"}
        return httpx.Response(200, json={"task_id": "1768", "status": "Success",
                                         "file_id": "1768440", "video_width": 1920,
                                         "base_resp": ok})  # fmt: skip

    client, seen = _client("minimax", answer)
    task = client.get("1768", ApiFormat.OPENAI)
    assert (task.state, task.video_url, task.width) == (TaskState.DONE, URL, 1920)
    assert [str(r.url) for r in seen] == [
        "https://api.example/v1/query/video_generation?task_id=1768",
        "https://api.example/v1/files/retrieve?file_id=1768440",
    ]


def test_veo_done_without_a_sample_failed_with_the_filters_reason():
    filtered = {"name": "models/veo/operations/o", "done": True, "response": {
        "generateVideoResponse": {"raiMediaFilteredCount": 1,
                                  "raiMediaFilteredReasons": ["unsafe content"]}}}  # fmt: skip
    client, seen = _client("veo", lambda r: httpx.Response(200, json=filtered))
    task = client.get("models/veo/operations/o", ApiFormat.OPENAI)
    assert (task.state, task.error_message) == (TaskState.FAILED, "unsafe content")
    assert seen[0].url.raw_path == b"/v1beta/models/veo/operations/o"
    assert seen[0].headers["x-goog-api-key"] == "k:s" and "authorization" not in seen[0].headers
    with pytest.raises(PermanentError):
        client.get("models/../../admin", ApiFormat.OPENAI)


def _sent_body(dialect: str, request: VideoRequest) -> tuple[httpx.Request, dict]:
    client, seen = _client(
        dialect,
        lambda r: httpx.Response(
            200,
            json={
                "id": "x",
                "task_id": "x",
                "name": "x",
                "data": {"task_id": "x", "task_status": "submitted"},
                "output": {"task_id": "x", "task_status": "PENDING"},
            },
        ),  # fmt: skip
    )
    client.create(request, ApiFormat.OPENAI, "job-1")
    return seen[0], json.loads(seen[0].content)


@pytest.mark.parametrize(
    ("dialect", "request_fields", "path", "body"),
    [
        ("replicate", {"model": "kwaivgi/kling-v2.1", "aspect_ratio": "16:9", "duration": 5},
         "/v1/models/kwaivgi/kling-v2.1/predictions",
         {"input": {"prompt": "a cat", "duration": 5, "aspect_ratio": "16:9"}}),
        ("runway", {"model": "gen4.5", "aspect_ratio": "16:9", "duration": 5},
         "/v1/text_to_video",
         {"model": "gen4.5", "promptText": "a cat", "ratio": "1280:720", "duration": 5}),
        ("kling", {"model": "kling-v2-6", "aspect_ratio": "9:16", "duration": 5},
         "/v1/videos/text2video",
         {"model_name": "kling-v2-6", "prompt": "a cat", "duration": "5",
          "aspect_ratio": "9:16", "external_task_id": "job-1"}),
        ("luma", {"model": "ray-2", "aspect_ratio": "16:9", "duration": 5},
         "/dream-machine/v1/generations",
         {"prompt": "a cat", "model": "ray-2", "aspect_ratio": "16:9", "duration": "5s"}),
        ("seedance", {"model": "seedance-1-0-pro", "aspect_ratio": "16:9", "duration": 5},
         "/api/v3/contents/generations/tasks",
         {"model": "seedance-1-0-pro", "content": [{"type": "text", "text": "a cat"}],
          "ratio": "16:9", "duration": 5}),
        ("wan", {"model": "wan2.6-t2v", "size": "1920x1080", "duration": 5},
         "/api/v1/services/aigc/video-generation/video-synthesis",
         {"model": "wan2.6-t2v", "input": {"prompt": "a cat"},
          "parameters": {"size": "1920*1080", "duration": 5}}),
        ("openrouter", {"model": "google/veo-3.1", "aspect_ratio": "16:9", "duration": 8},
         "/api/v1/videos",
         {"model": "google/veo-3.1", "prompt": "a cat", "duration": 8, "aspect_ratio": "16:9"}),
        ("minimax", {"model": "MiniMax-Hailuo-02", "duration": 6},
         "/v1/video_generation", {"model": "MiniMax-Hailuo-02", "prompt": "a cat", "duration": 6}),
        ("veo", {"model": "veo-3.1-generate-preview", "aspect_ratio": "16:9", "duration": 8},
         "/v1beta/models/veo-3.1-generate-preview:predictLongRunning",
         {"instances": [{"prompt": "a cat"}],
          "parameters": {"aspectRatio": "16:9", "durationSeconds": 8}}),
    ],
)  # fmt: skip
def test_each_dialect_sends_the_body_its_provider_documents(dialect, request_fields, path, body):
    sent, sent_body = _sent_body(dialect, VideoRequest(prompt="a cat", **request_fields))
    assert sent.url.path == path
    assert sent_body == body
    assert "Idempotency-Key" not in sent.headers  # none of these documents one


def test_runway_sends_its_version_header_and_wan_its_async_header_on_create():
    sent, _ = _sent_body("runway", VideoRequest(prompt="a cat"))
    assert sent.headers["X-Runway-Version"] == "2024-11-06"
    sent, _ = _sent_body("wan", VideoRequest(prompt="a cat"))
    assert sent.headers["X-DashScope-Async"] == "enable"


def test_kling_refusing_a_create_with_http_200_fails_it_with_klings_reason():
    refusal = {"code": 1301, "message": "content safety", "request_id": "r"}
    client, _ = _client("kling", lambda r: httpx.Response(200, json=refusal))
    with pytest.raises(PermanentError) as e:
        client.create(VideoRequest(prompt="a cat"), ApiFormat.OPENAI, "job-1")
    assert e.value.code == "1301" and "content safety" in str(e.value)


@pytest.mark.parametrize("dialect", ["luma", "kling", "router"])
def test_a_successful_create_without_a_task_id_or_a_refusal_may_have_made_a_task(dialect):
    """Neither refused nor named: handled as a create that may have taken effect (resent
    with the same key, looked up, or ended uncertain_create), never as a refusal."""
    client, _ = _client(dialect, lambda r: httpx.Response(200, json={"status": "queued"}))
    with pytest.raises(RetryableError) as e:
        client.create(VideoRequest(prompt="a cat"), ApiFormat.OPENAI, "job-1")
    assert e.value.code == "bad_response" and not e.value.not_taken


@pytest.mark.parametrize(
    ("dialect", "refusal"),
    [
        ("kling", {"code": 1303, "message": "parallel task over resource pack limit"}),
        ("minimax", {"base_resp": {"status_code": 1002, "status_msg": "rate limit"}}),
    ],
)
def test_a_create_refused_for_now_in_the_body_is_retried_later(dialect, refusal):
    client, _ = _client(dialect, lambda r: httpx.Response(200, json=refusal))
    with pytest.raises(RetryableError) as e:
        client.create(VideoRequest(prompt="a cat"), ApiFormat.OPENAI, "job-1")
    assert e.value.code == "rate_limited"


def test_fal_names_a_request_by_its_url_and_reads_the_outcome_at_response_url():
    root = "https://api.example/fal-ai/kling-video/requests/80e7"

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":  # the documented create answer
            return httpx.Response(200, json={"request_id": "80e7", "response_url": root,
                                             "status_url": f"{root}/status",
                                             "cancel_url": f"{root}/cancel"})  # fmt: skip
        if request.url.path.endswith("/status"):
            here = f"https://api.example{request.url.path.removesuffix('/status')}"
            return httpx.Response(200, json={"status": "COMPLETED", "response_url": here})
        if "bad" in request.url.path:
            return httpx.Response(422, json={"detail": "prompt too long"})
        return httpx.Response(200, json={"video": {"url": URL, "content_type": "video/mp4"}})

    client, seen = _client("fal", answer)
    request = VideoRequest(model="fal-ai/kling-video/v1.6/pro/text-to-video", prompt="a cat")
    task = client.create(request, ApiFormat.OPENAI, "job-1")
    assert task.id == "fal-ai/kling-video/requests/80e7"
    assert seen[0].url.path == "/fal-ai/kling-video/v1.6/pro/text-to-video"
    assert seen[0].headers["Authorization"] == "Key k:s"
    done = client.get(task.id, ApiFormat.OPENAI)
    assert (done.state, done.video_url) == (TaskState.DONE, URL)
    assert [r.url.path for r in seen[1:]] == [f"/{task.id}/status", f"/{task.id}"]
    with pytest.raises(PermanentError) as e:
        client.get("fal-ai/bad/requests/1", ApiFormat.OPENAI)
    assert "prompt too long" in str(e.value)
    assert client.cancel(task.id) and seen[-1].method == "PUT"
    assert seen[-1].url.path == f"/{task.id}/cancel"


@pytest.mark.parametrize(
    ("dialect", "usage"),
    [
        ("openrouter", {"cost": 0.5}),
        ("wan", {"video_duration": 5}),
        ("seedance", {"completion_tokens": 108900}),
        ("replicate", None),  # the documented answer above carries no metrics
    ],
)
def test_usage_is_kept_where_the_dialect_says_it_is(dialect, usage):
    done, _, _ = DOCUMENTED[dialect]
    client, _ = _client(dialect, lambda r: httpx.Response(200, json=done))
    assert client.get("t1", ApiFormat.OPENAI).usage == usage


@pytest.mark.parametrize(
    ("dialect", "cost", "usd"),
    [
        ("openrouter", 0.5, 0.5),
        ("router", 0.1234567, 0.123457),  # to the micro-dollar
        ("router", "0.2", 0.2),
        ("router", -1, None),  # not a cost
        ("router", "NaN", None),
        ("router", 1e9, None),  # past any task's: a unit mix-up, not believed
        ("seedance", 0.5, None),  # its dialect reads no cost
    ],
)
def test_a_tasks_cost_is_read_where_the_dialect_says_and_only_when_plausible(dialect, cost, usd):
    answer = {"id": "t1", "status": "completed", "unsigned_urls": [URL], "video_url": URL,
              "usage": {"cost": cost}}  # fmt: skip
    client, _ = _client(dialect, lambda r: httpx.Response(200, json=answer))
    assert client.get("t1", ApiFormat.OPENAI).cost_usd == usd


def test_usage_keeps_only_numbers_and_at_most_sixteen():
    answer = {"id": "j", "status": "completed", "unsigned_urls": [URL],
              "usage": {"cost": "NaN"}}  # fmt: skip
    client, _ = _client("openrouter", lambda r: httpx.Response(200, json=answer))
    assert client.get("j", ApiFormat.OPENAI).usage is None
    many = {"request_id": "r", "usage": {f"f{i}": i for i in range(40)} | {"s": "x"},
            "output": {"task_id": "t", "task_status": "RUNNING"}}  # fmt: skip
    client, _ = _client("wan", lambda r: httpx.Response(200, json=many))
    usage = client.get("t", ApiFormat.OPENAI).usage
    assert usage is not None and len(usage) == 16 and "s" not in usage
