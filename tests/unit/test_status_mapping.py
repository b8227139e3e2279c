"""Every provider's words for a task's state, and every place a finished file can be."""

import httpx
import pytest

from producer.core.errors import PermanentError
from producer.core.settings import ApiFormat, Settings
from worker.answers import error_message, same_origin
from worker.dialect import load_dialect
from worker.egress import Credentials, origin_of
from worker.provider import ProviderClient, TaskState, client_for

WORDS = {
    TaskState.WAITING: "queued pending submitted not_start notstarted preparing created starting "
    "preprocessing queueing Queueing in_queue IN_QUEUE THROTTLED unknown",
    TaskState.RUNNING: "processing in_progress running generating dreaming IN_PROGRESS",
    TaskState.DONE: "completed complete success Success succeeded succeed finished done COMPLETED",
    TaskState.FAILED: "failed failure fail Fail error cancelled canceled aborted expired timeout",
}


def map_status(word):
    return load_dialect("router").state_of(word)


@pytest.mark.parametrize(("word", "state"), [(w, s) for s, ws in WORDS.items() for w in ws.split()])
def test_every_documented_status_word_maps_case_insensitively(word, state):
    assert map_status(word) is state
    assert map_status(word.upper()) is state
    assert map_status(f"  {word.title()} ") is state


@pytest.mark.parametrize("word", ["sleeping", "", None, 3, "done-ish", "warming_up"])
def test_an_unheard_of_word_is_unknown_not_a_guess(word):
    assert map_status(word) is TaskState.UNKNOWN


def _client() -> ProviderClient:
    return client_for(Settings(api_base_url="http://api.test", api_key="sk-secret"))


def _response(body, headers=None, status=200):
    return httpx.Response(
        status, json=body, headers=headers, request=httpx.Request("GET", "http://api.test/x")
    )


@pytest.mark.parametrize(
    "body",
    [
        {"id": "t1", "status": "completed", "video": {"url": "http://cdn/a.mp4", "width": 4}},
        {"id": "t1", "status": "succeeded", "video_url": "http://cdn/a.mp4"},
        {"id": "t1", "status": "SUCCESS", "url": "http://cdn/a.mp4"},
        {
            "code": "success",
            "data": {"task_id": "t1", "status": "finished", "url": "http://cdn/a.mp4"},
        },
    ],
)
def test_the_file_url_is_found_wherever_the_provider_puts_it(body):
    task = _client().parse_task(_response(body))
    assert task.state is TaskState.DONE
    assert task.video_url == "http://cdn/a.mp4"
    assert task.id == "t1"


URL = "http://cdn/a.mp4"


@pytest.mark.parametrize(
    "body",
    [
        {"id": "t1", "status": "succeeded", "output": URL},  # Replicate
        {"id": "t1", "status": "SUCCEEDED", "output": [URL]},  # Runway
        {"code": 0, "message": "SUCCEED", "data": {"task_id": "t1", "task_status": "succeed",
         "task_result": {"videos": [{"id": "v", "url": URL, "duration": "5"}]}}},  # Kling
        {"id": "t1", "state": "completed", "assets": {"video": URL}},  # Luma
        {"id": "t1", "status": "succeeded", "content": {"video_url": URL}},  # Seedance
        {"output": {"task_id": "t1", "task_status": "SUCCEEDED", "video_url": URL}},  # Wan
        {"name": "t1", "done": True, "response": {"generateVideoResponse": {
            "generatedSamples": [{"video": {"uri": URL}}]}}},  # Veo
        {"id": "t1", "status": "completed", "unsigned_urls": [URL]},  # OpenRouter
        {"id": "t1", "status": "completed", "urls": [URL]},
    ],
)  # fmt: skip
def test_every_providers_file_url_place_is_found(body):
    task = _client().parse_task(_response(body), "t1")
    assert (task.state, task.video_url, task.id) == (TaskState.DONE, URL, "t1")


def test_openai_answers_carry_progress_and_the_poll_after_hint():
    task = _client().parse_task(
        _response(
            {"id": "v1", "object": "video", "status": "in_progress", "progress": 40},
            headers={"openai-poll-after-ms": "2500"},
        )
    )
    assert (task.state, task.progress, task.poll_after_s) == (TaskState.RUNNING, 40, 2.5)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"code": "moderation", "message": "blocked"}}, ("moderation", "blocked")),
        ({"error": "out of credits"}, (None, "out of credits")),
        ({"fail_reason": "bad prompt"}, (None, "bad prompt")),
        ({"failure_reason": "input_moderation"}, (None, "input_moderation")),
        ({"message": "nope"}, (None, "nope")),
        ({"failure": "moderated", "failureCode": "SAFETY"}, ("SAFETY", "moderated")),
        ({"task_status_msg": "risk control"}, (None, "risk control")),
        ({"base_resp": {"status_code": 1026, "status_msg": "sensitive"}}, ("1026", "sensitive")),
        ("not a dict", (None, "fallback")),
    ],
)
def test_the_failure_reason_is_read_from_any_field(body, expected):
    assert error_message(body, "fallback") == expected


def test_a_missing_task_is_a_permanent_error():
    with pytest.raises(PermanentError) as e:
        _client().parse_task(_response({"code": "task_not_exist", "message": "x"}), "t9")
    assert e.value.code == "task_not_found"


def _bound(credentials: Credentials, url: str, **headers: str) -> httpx.Request:
    request = httpx.Request("GET", url, headers=headers)
    credentials.bind(request)
    return request


def test_the_api_key_goes_only_to_the_apis_own_origin():
    c = _client().credentials()
    sent = _bound(c, "http://api.test/v1/videos/x/content")
    assert sent.headers["Authorization"].endswith("sk-secret")
    # A redirect hop httpx built from the one before carries the header over: taken off.
    carried = {"x-goog-api-key": "k", "Authorization": "Bearer sk-secret"}
    for url in ("http://cdn.test/x.mp4", "http://api.test:8080/x.mp4", "https://api.test/x.mp4"):
        assert "authorization" not in _bound(c, url, **carried).headers
    goog = Credentials(origin_of(httpx.URL("http://api.test")), {"x-goog-api-key": "k"})
    assert "x-goog-api-key" not in _bound(goog, "http://cdn.test/x.mp4", **carried).headers
    assert same_origin("http://API.test:80/a", "http://api.test/b")


def _client_answering(answer) -> tuple[ProviderClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    settings = Settings(api_base_url="http://api.test", api_key="sk-secret")
    return client_for(settings, http=http), seen


def test_both_formats_are_polled_at_the_documented_query_route():
    for api_format in ApiFormat:
        client, seen = _client_answering(
            lambda r: httpx.Response(200, json={"id": "t1", "status": "processing"})
        )
        assert client.get("t1", api_format).state is TaskState.RUNNING
        assert [(r.method, r.url.path) for r in seen] == [("GET", "/v1/videos/t1")]


def test_a_router_without_the_documented_route_is_asked_at_the_unified_query():
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/video/query":
            return httpx.Response(200, json={"id": "t1", "status": "completed", "video_url": URL})
        return httpx.Response(404, json={"error": {"message": "Not Found"}})

    client, seen = _client_answering(answer)
    assert client.get("t1", ApiFormat.UNIFIED).video_url == URL
    assert dict(seen[1].url.params) == {"id": "t1", "task_id": "t1"}
    client, seen = _client_answering(answer)
    with pytest.raises(PermanentError) as e:
        client.get("t1", ApiFormat.OPENAI)  # never polled anywhere else
    assert e.value.status_code == 404 and len(seen) == 1


def test_task_not_exist_with_400_fails_at_once_without_the_fallback():
    client, seen = _client_answering(
        lambda r: httpx.Response(400, json={"code": "task_not_exist", "message": "task_not_exist"})
    )
    with pytest.raises(PermanentError) as e:
        client.get("t1", ApiFormat.UNIFIED)
    assert e.value.code == "task_not_found" and len(seen) == 1


def test_where_neither_query_route_is_served_the_documented_routes_error_stands():
    def answer(request: httpx.Request) -> httpx.Response:
        status = 404 if request.url.path.startswith("/v1/videos/") else 405
        return httpx.Response(status, json={"error": {"message": request.url.path}})

    client, _ = _client_answering(answer)
    with pytest.raises(PermanentError) as e:
        client.get("t1", ApiFormat.UNIFIED)
    assert e.value.status_code == 404 and "/v1/videos/t1" in str(e.value)


def test_a_key_in_the_query_goes_only_to_its_origin_and_other_parameters_keep_their_bytes():
    c = Credentials(origin_of(httpx.URL("http://api.test")), params={"key": "k/1"})
    sent = _bound(c, "http://api.test/files/x.mp4?exp=9&sig=a%2Bb")
    assert sent.url.query == b"exp=9&sig=a%2Bb&key=k%2F1"
    # A Location that copied the query along: the key comes off, a CDN's own `key` stays.
    hop = _bound(c, "http://cdn.test/x.mp4?exp=9&sig=a%2Bb&key=k%2F1&key=theirs")
    assert hop.url.query == b"exp=9&sig=a%2Bb&key=theirs"
    assert _bound(c, "http://cdn.test/x.mp4?key=k%2F1").url.query == b""
