"""Every provider's words for a task's state, and every place a finished file can be."""

import httpx
import pytest

from producer.errors import PermanentError
from producer.settings import Settings
from worker.provider import ProviderClient, TaskState, error_message, map_status, same_origin

WORDS = {
    TaskState.WAITING: "queued pending submitted not_start preparing created starting "
    "preprocessing unknown IN_QUEUE",
    TaskState.RUNNING: "processing in_progress running generating IN_PROGRESS",
    TaskState.DONE: "completed complete success succeeded finished COMPLETED",
    TaskState.FAILED: "failed failure fail error cancelled canceled expired timeout",
}


@pytest.mark.parametrize(("word", "state"), [(w, s) for s, ws in WORDS.items() for w in ws.split()])
def test_every_documented_status_word_maps_case_insensitively(word, state):
    assert map_status(word) is state
    assert map_status(word.upper()) is state
    assert map_status(f"  {word.title()} ") is state


@pytest.mark.parametrize("word", ["sleeping", "", None, 3, "done-ish"])
def test_an_unheard_of_word_is_unknown_not_a_guess(word):
    assert map_status(word) is TaskState.UNKNOWN


def _client() -> ProviderClient:
    return ProviderClient(Settings(api_base_url="http://api.test", api_key="sk-secret"))


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
        ("not a dict", (None, "fallback")),
    ],
)
def test_the_failure_reason_is_read_from_any_field(body, expected):
    assert error_message(body, "fallback") == expected


def test_a_missing_task_is_a_permanent_error():
    with pytest.raises(PermanentError) as e:
        _client().parse_task(_response({"code": "task_not_exist", "message": "x"}), "t9")
    assert e.value.code == "task_not_found"


def test_the_api_key_goes_only_to_the_apis_own_origin():
    c = _client()
    assert c.download_headers("http://api.test/v1/videos/x/content")["Authorization"].endswith(
        "sk-secret"
    )
    assert c.download_headers("http://cdn.test/x.mp4") == {}
    assert c.download_headers("http://api.test:8080/x.mp4") == {}
    assert c.download_headers("https://api.test/x.mp4") == {}
    assert same_origin("http://API.test:80/a", "http://api.test/b")
