"""Every provider answer, however odd, becomes a clean ProviderTask or a typed provider error.

Pure logic: responses are built in memory, calls go through httpx.MockTransport.
"""

import email.utils
import io
import json
import math
import random
import struct
import time

import httpx
import pytest

from ops.sandbox.media import encode_mp4
from producer.core.errors import InvalidVideo, PermanentError, RetryableError
from producer.core.settings import Settings
from worker.answers import ProviderTask, error_message, poll_after_s, retry_after_s
from worker.media import probe
from worker.provider import ProviderClient, TaskState, client_for

KEY = "sk-very-secret-key"
ROUTE = "http://api.test/v1/videos/1"


def _client(handler=None) -> ProviderClient:
    settings = Settings(api_base_url="http://api.test", api_key=KEY)
    http = httpx.Client(transport=httpx.MockTransport(handler)) if handler else None
    return client_for(settings, http=http)


def _raw(content: bytes | str, status: int = 200, headers=None) -> httpx.Response:
    return httpx.Response(
        status, content=content, headers=headers, request=httpx.Request("GET", ROUTE)
    )


def _json(body, headers=None) -> httpx.Response:
    return _raw(json.dumps(body), headers={"content-type": "application/json", **(headers or {})})


def _parse(body, task_id: str = "t0") -> ProviderTask:
    return _client().parse_task(_json(body), task_id)


def _answering(status: int, content: bytes | str, headers=None) -> ProviderClient:
    return _client(lambda request: httpx.Response(status, content=content, headers=headers))


# --- Retry-After and poll hints ---


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "-1", "retry-after": "9"}, 9.0),
        ({}, None),
    ],
)
def test_numeric_retry_after_and_retry_after_ms_are_seconds(headers, expected):
    assert retry_after_s(httpx.Headers(headers)) == expected


def test_an_http_date_retry_after_is_the_seconds_until_then():
    then = email.utils.formatdate(time.time() + 120, usegmt=True)
    wait_s = retry_after_s(httpx.Headers({"retry-after": then}))
    assert wait_s is not None and 110 < wait_s <= 121


def test_a_retry_after_date_in_the_past_means_now():
    assert retry_after_s(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        "soon",
        "-5",
        "Wed, 99 Foo",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e999",
        "Wed, 21 Oct 2015 07:28:00",  # no time zone
        "Wed, 21 Oct 99999 07:28:00 GMT",
        "5, 10",
        " ",
        "x" * 5000,
    ],
)
def test_garbage_retry_after_is_ignored(value):
    assert retry_after_s(httpx.Headers({"retry-after": value})) is None
    assert retry_after_s(httpx.Headers({"retry-after-ms": value})) is None


@pytest.mark.parametrize(("value", "expected"), [("99999999999", 99999999999.0), ("1e300", 1e300)])
def test_a_huge_retry_after_is_parsed_finite_and_left_for_the_caller_to_cap(value, expected):
    wait_s = retry_after_s(httpx.Headers({"retry-after": value}))
    assert wait_s == expected and math.isfinite(wait_s)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"openai-poll-after-ms": "2500"}, 2.5),
        ({"openai-poll-after-ms": "nan"}, None),
        ({"openai-poll-after-ms": "inf"}, None),
        ({"openai-poll-after-ms": "-100"}, None),
        ({"openai-poll-after-ms": "later", "retry-after": "3"}, 3.0),
    ],
)
def test_a_garbage_poll_after_hint_is_ignored(headers, expected):
    assert poll_after_s(httpx.Headers(headers)) == expected
    assert _parse({"id": "t", "status": "queued"} | {}, "t").poll_after_s is None
    task = _client().parse_task(_json({"id": "t", "status": "queued"}, headers))
    assert task.poll_after_s == expected


# --- error_message ---


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"error": {"code": 40001, "message": "bad size"}}, "40001"),
        ({"error": {"code": 40001.0, "message": "bad size"}}, "40001"),
        ({"error": {"code": -7, "message": "bad size"}}, "-7"),
        ({"error": {"code": " moderation ", "message": "bad size"}}, "moderation"),
        ({"code": 500, "message": "bad size"}, "500"),
    ],
)
def test_a_numeric_error_code_becomes_a_string(body, code):
    assert error_message(body, "fallback") == (code, "bad size")


@pytest.mark.parametrize("code", [True, False, {"a": 1}, [1, 2], None, "", float("nan"), 10**30])
def test_an_error_code_that_names_nothing_is_none_or_falls_back_to_the_type(code):
    assert error_message({"error": {"code": code, "message": "m"}}, "f") == (None, "m")
    body = {"error": {"code": code, "type": "invalid_request_error", "message": "m"}}
    assert error_message(body, "f") == ("invalid_request_error", "m")


def test_a_long_error_code_is_cut_short():
    code, _ = error_message({"error": {"code": "c" * 1000}}, "f")
    assert code is not None and len(code) <= 64


def test_an_error_message_is_one_line_of_bounded_length():
    code, message = error_message({"error": {"message": "line\n\r\t" * 5000}}, "f")
    assert len(message) <= 500 and "\n" not in message and "\r" not in message
    assert message.startswith("line line")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"message": {"why": "nsfw"}}}, '{"why": "nsfw"}'),
        ({"detail": [{"loc": ["prompt"], "msg": "required"}]}, '[{"loc": ["prompt"]'),
        ({"error": {"message": 42}}, "42"),
        ({"error": {"message": ""}}, "fallback"),
        ({"error": {}}, "fallback"),
        ({"error": ["a"]}, "fallback"),
        ({"error": "   "}, "fallback"),
    ],
)
def test_a_message_of_any_shape_comes_out_as_text(body, expected):
    _, message = error_message(body, "fallback")
    assert isinstance(message, str) and message.startswith(expected)


@pytest.mark.parametrize("body", [None, 3, 2.5, "text", [1, {"error": 2}], True, float("nan")])
def test_error_message_of_any_json_value_falls_back(body):
    assert error_message(body, "fallback") == (None, "fallback")


# --- parse_task: what is not a JSON object ---


def test_an_html_page_with_200_is_a_retryable_bad_response_naming_route_and_content_type():
    page = "<html><body>Sign in to continue: secret internals</body></html>"
    response = _raw(page, headers={"content-type": "text/html; charset=utf-8"})
    with pytest.raises(RetryableError) as e:
        _client().parse_task(response, "1")
    assert e.value.code == "bad_response"
    assert "GET /v1/videos/1" in str(e.value) and "text/html" in str(e.value)
    assert "secret internals" not in str(e.value)


@pytest.mark.parametrize(
    "content", [b"OK", b"", b"\xff\xfe\x00garbage", b'{"id": "t", "status": ', b"[" * 100_000]
)
def test_a_non_json_200_is_a_retryable_bad_response(content):
    with pytest.raises(RetryableError) as e:
        _client().parse_task(_raw(content, headers={"content-type": "text/plain"}))
    assert e.value.code == "bad_response"
    assert "not JSON" in str(e.value) and "text/plain" in str(e.value)


@pytest.mark.parametrize(
    ("body", "kind"), [([1, 2], "an array"), ("done", "a string"), (3, "a number"), (None, "null")]
)
def test_a_json_answer_that_is_not_an_object_is_a_retryable_bad_response(body, kind):
    with pytest.raises(RetryableError) as e:
        _parse(body)
    assert e.value.code == "bad_response" and kind in str(e.value)


def test_a_response_without_its_request_still_gives_a_readable_error():
    with pytest.raises(RetryableError) as e:
        _client().parse_task(httpx.Response(200, content=b"nope"))
    assert e.value.code == "bad_response"


# --- parse_task: status ---


def test_a_missing_status_is_still_waiting_so_the_job_keeps_polling():
    task = _parse({"id": "t1", "model": "grok-video"})
    assert (task.state, task.raw_status, task.id) == (TaskState.WAITING, None, "t1")


@pytest.mark.parametrize(
    ("body", "state"),
    [
        ({"name": "operations/x", "done": False}, TaskState.RUNNING),
        ({"name": "operations/x", "done": True, "response": {}}, TaskState.DONE),
        ({"name": "operations/x", "done": True, "error": {"message": "x"}}, TaskState.FAILED),
        ({"name": "operations/x", "done": "yes"}, TaskState.WAITING),
    ],
)
def test_a_boolean_done_without_a_status_is_a_long_running_operations_state(body, state):
    assert _parse(body).state is state


def test_a_done_operations_error_is_the_reason():
    task = _parse({"done": True, "error": {"code": 3, "message": "prompt blocked"}})
    assert (task.state, task.error_code, task.error_message) == (
        TaskState.FAILED,
        "3",
        "prompt blocked",
    )


@pytest.mark.parametrize(
    ("status", "raw"),
    [(3, "3"), (["done"], '["done"]'), ({"a": 1}, '{"a": 1}'), (True, "true"), (2.5, "2.5")],
)
def test_a_status_that_is_not_a_string_is_unknown_with_a_short_raw_word(status, raw):
    task = _parse({"id": "t1", "status": status})
    assert (task.state, task.raw_status) == (TaskState.UNKNOWN, raw)


def test_a_null_status_falls_back_to_state():
    assert _parse({"status": None, "state": "SUCCEEDED"}).state is TaskState.DONE


def test_a_huge_status_is_cut_short_in_raw_status():
    task = _parse({"status": "x" * 10_000})
    assert task.state is TaskState.UNKNOWN and len(task.raw_status) <= 64


# --- parse_task: progress ---


def test_nan_progress_is_none():
    response = _raw(b'{"id":"t","status":"in_progress","progress":NaN}')
    task = _client().parse_task(response)
    assert (task.state, task.progress) == (TaskState.RUNNING, None)


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("40", 40),
        ("45.9", 45),
        ("-3", 0),
        ("150", 100),
        ('"45%"', 45),
        ('" 45 % "', 45),
        ('"45"', 45),
        ("Infinity", None),
        ("-Infinity", None),
        ("1e999", None),
        ('"soon"', None),
        ('"nan"', None),
        ("true", None),
        ("null", None),
        ("[50]", None),
        ('{"pct": 50}', None),
    ],
)
def test_progress_is_a_clamped_int_when_it_is_a_finite_number_else_none(literal, expected):
    response = _raw(f'{{"id": "t", "status": "in_progress", "progress": {literal}}}')
    assert _client().parse_task(response).progress == expected


# --- parse_task: the file URL ---


@pytest.mark.parametrize(
    "body",
    [
        {"status": "completed", "url": ["", "ftp://x/a.mp4", 3, "https://cdn/a.mp4", "http://b"]},
        {"status": "completed", "video_url": ["https://cdn/a.mp4"]},
        {"status": "completed", "video": {"url": ["https://cdn/a.mp4"]}},
        {"status": "completed", "video": "https://cdn/a.mp4"},
        {"status": "completed", "video": {"url": "  https://cdn/a.mp4  "}},
        {"status": "completed", "video_url": {"url": "https://cdn/a.mp4"}},
        {"status": "completed", "video": {"url": None}, "url": "https://cdn/a.mp4"},
    ],
)
def test_a_file_url_given_as_a_list_or_object_gives_its_first_http_url(body):
    assert _parse(body).video_url == "https://cdn/a.mp4"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "javascript:alert(1)",
        "s3://bucket/a.mp4",
        "/files/a.mp4",
        "cdn/a.mp4",
        "http://",
        "http://cdn:99999/a.mp4",
        "http://[::1/a.mp4",
        "https://cdn/a\n.mp4",
        "https://cdn/" + "a" * 10_000,
        42,
        True,
        {"href": "https://cdn/a.mp4"},
        [["https://cdn/a.mp4"]],
        [],
    ],
)
def test_only_an_http_or_https_url_is_a_video_url(url):
    assert _parse({"status": "completed", "url": url}).video_url is None


# --- parse_task: dimensions, duration, id ---


def test_dimensions_and_duration_that_parse_as_positive_numbers_are_kept():
    task = _parse({"status": "done", "video": {"width": "1920", "height": 1080.0, "duration": "8"}})
    assert (task.width, task.height, task.duration_s) == (1920, 1080, 8.0)
    assert isinstance(task.width, int) and isinstance(task.height, int)


@pytest.mark.parametrize(
    "literal", ["0", "-1", "1.5", "true", '"wide"', "NaN", "1e999", "null", "[1920]", "1e12"]
)
def test_dimensions_that_are_not_positive_finite_ints_are_none(literal):
    content = f'{{"status": "done", "video": {{"width": {literal}, "height": {literal}}}}}'
    task = _client().parse_task(_raw(content))
    assert (task.width, task.height) == (None, None)


@pytest.mark.parametrize("literal", ["0", "-2", "NaN", "Infinity", "true", '"long"', "{}"])
def test_a_duration_that_is_not_a_positive_finite_number_is_none(literal):
    task = _client().parse_task(_raw(f'{{"status": "done", "video": {{"duration": {literal}}}}}'))
    assert task.duration_s is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"id": 123}, "123"),
        ({"id": " v_1 "}, "v_1"),
        ({"task_id": "t7"}, "t7"),
        ({"id": None, "task_id": 8}, "8"),
        ({"id": ["x"]}, "asked"),
        ({"id": True}, "asked"),
        ({"id": 1.5}, "asked"),
        ({"id": {"x": 1}}, "asked"),
        ({"id": ""}, "asked"),
        ({"id": "a\nb"}, "asked"),
    ],
)
def test_the_id_is_the_answers_str_or_int_id_else_the_one_asked_for(body, expected):
    assert _parse({"status": "queued", **body}, "asked").id == expected


def test_a_failed_tasks_numeric_code_and_long_reason_come_out_as_bounded_strings():
    task = _parse({"status": "failed", "error": {"code": 1301, "message": "no " * 1000}})
    assert task.state is TaskState.FAILED
    assert task.error_code == "1301" and len(task.error_message) <= 500


# --- task_not_exist ---

NOT_FOUND_BODIES = [
    {"code": "task_not_exist", "message": "x"},
    {"error": {"code": "task_not_exist", "message": "x"}},
    {"data": {"code": "task_not_exist"}, "status": "x"},
    {"code": "fail", "data": {"code": "TASK_NOT_EXIST"}},
]


@pytest.mark.parametrize("body", NOT_FOUND_BODIES)
def test_task_not_exist_anywhere_in_a_200_is_task_not_found(body):
    with pytest.raises(PermanentError) as e:
        _parse(body, "t9")
    assert e.value.code == "task_not_found" and "t9" in str(e.value)


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
@pytest.mark.parametrize("body", NOT_FOUND_BODIES)
def test_task_not_exist_with_any_http_status_is_task_not_found(body, status):
    client = _answering(status, json.dumps(body))
    with pytest.raises(PermanentError) as e:
        client.get("t9", client.api_format)
    assert e.value.code == "task_not_found" and e.value.status_code == status


# --- _call: error answers ---


@pytest.mark.parametrize(
    ("status", "content", "error"),
    [
        (502, b"<html><h1>Bad Gateway</h1></html>", RetryableError),
        (400, b"\xff\xfe\x00 not text", PermanentError),
        (400, b"[" * 100_000, PermanentError),
        (400, b'{"error": {"code": {"deep": 1}, "message": ["a"]}}', PermanentError),
        (418, b"", PermanentError),
        (599, b"", RetryableError),
    ],
)
def test_an_odd_error_body_is_still_a_provider_error(status, content, error):
    with pytest.raises(error) as e:
        _answering(status, content).get("t1", Settings().api_format)
    assert isinstance(e.value.code, str) and e.value.status_code == status
    assert f"HTTP {status}" in str(e.value)


def test_an_html_error_page_is_named_not_quoted():
    client = _answering(
        503, "<html><body>internal stack</body></html>", {"content-type": "text/html"}
    )
    with pytest.raises(RetryableError) as e:
        client.get("t1", client.api_format)
    assert "HTML page" in str(e.value) and "internal stack" not in str(e.value)


def test_a_numeric_error_code_on_a_4xx_is_the_errors_code():
    body = json.dumps({"error": {"code": 40001, "message": "bad size"}})
    with pytest.raises(PermanentError) as e:
        _answering(400, body).get("t1", Settings().api_format)
    assert e.value.code == "40001" and "bad size" in str(e.value)


def test_a_huge_error_body_is_read_only_in_part_and_quoted_briefly():
    pulled = []

    def chunks():
        for _ in range(10_000):  # 640 MB if read to the end
            pulled.append(1)
            yield b"x" * 65_536

    client = _client(lambda request: httpx.Response(500, content=chunks()))
    with pytest.raises(RetryableError) as e:
        client.get("t1", client.api_format)
    assert len(pulled) <= 3
    assert len(str(e.value)) < 300


def test_the_api_key_never_appears_in_an_error_even_if_the_provider_echoes_it():
    body = json.dumps({"error": {"code": KEY, "message": f"invalid key {KEY}"}})
    with pytest.raises(PermanentError) as e:
        _answering(401, body).get("t1", Settings().api_format)
    assert KEY not in str(e.value) and KEY not in e.value.code
    task = _client().parse_task(_json({"status": "failed", "fail_reason": f"key {KEY} banned"}))
    assert KEY not in (task.error_message or "")


def test_a_body_that_fails_to_decompress_is_retryable():
    def handler(request):
        stream = httpx.ByteStream(b"this is not gzip")
        return httpx.Response(200, headers={"content-encoding": "gzip"}, stream=stream)

    with pytest.raises(RetryableError):
        _client(handler).get("t1", Settings().api_format)


# --- fuzz: random JSON in, only the three outcomes out ---

_KEYS = [
    "id", "task_id", "status", "state", "progress", "video", "url", "video_url", "width",
    "height", "duration", "error", "code", "message", "data", "fail_reason", "detail", "type",
]  # fmt: skip
_WORDS = ["completed", "in_progress", "failed", "task_not_exist", "http://cdn/a.mp4", "45%", ""]


def _random_json(rng: random.Random, depth: int = 0):
    kinds = ["null", "bool", "int", "float", "str", "word"]
    if depth < 4:
        kinds += ["list", "dict", "dict"]
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 100, 101, 40001, 2**63, -(2**70), rng.randint(-999, 999)])
    if kind == "float":
        return rng.choice([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, rng.random()])
    if kind == "str":
        return "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 12)))
    if kind == "word":
        return rng.choice(_WORDS)
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    n = rng.randint(0, 6)
    return {rng.choice(_KEYS): _random_json(rng, depth + 1) for _ in range(n)}


def _assert_clean(task: ProviderTask) -> None:
    assert isinstance(task.id, str) and isinstance(task.state, TaskState)
    assert task.raw_status is None or (
        isinstance(task.raw_status, str) and len(task.raw_status) <= 64
    )
    assert task.progress is None or (type(task.progress) is int and 0 <= task.progress <= 100)
    assert task.video_url is None or task.video_url.startswith(("http://", "https://"))
    for n in (task.width, task.height):
        assert n is None or (type(n) is int and n > 0)
    assert task.duration_s is None or (math.isfinite(task.duration_s) and task.duration_s > 0)
    assert task.error_code is None or isinstance(task.error_code, str)
    assert task.error_message is None or len(task.error_message) <= 500
    assert task.poll_after_s is None or (
        math.isfinite(task.poll_after_s) and task.poll_after_s >= 0
    )


def _assert_clean_error(error: RetryableError | PermanentError) -> None:
    assert isinstance(error.code, str) and error.code
    # The catch-all in parse_task would say so: every shape must be handled on purpose.
    assert "could not be read" not in str(error)
    assert len(str(error)) < 400


def test_random_json_answers_give_only_a_task_or_a_provider_error():
    rng = random.Random(20260924)
    client = _client()
    outcomes = set()
    for _ in range(600):
        value = _random_json(rng)
        if rng.random() < 0.7:  # mostly objects with the fields that matter
            value = {rng.choice(_KEYS): _random_json(rng, 1) for _ in range(rng.randint(1, 8))}
        code, message = error_message(value, "fallback")
        assert (code is None or isinstance(code, str)) and isinstance(message, str)
        headers = {rng.choice(["retry-after", "openai-poll-after-ms"]): rng.choice(_WORDS + ["5"])}
        try:
            task = client.parse_task(_json(value, headers), "asked")
        except (RetryableError, PermanentError) as e:
            _assert_clean_error(e)
            outcomes.add(type(e))
        else:
            _assert_clean(task)
            outcomes.add(ProviderTask)
    assert outcomes == {ProviderTask, RetryableError, PermanentError}


def test_random_json_error_answers_give_only_a_provider_error():
    rng = random.Random(7)
    for _ in range(200):
        body = json.dumps(_random_json(rng))
        status = rng.choice([400, 401, 404, 409, 422, 429, 500, 502, 503])
        with pytest.raises((RetryableError, PermanentError)) as e:
            _answering(status, body).get("t1", Settings().api_format)
        _assert_clean_error(e.value)


def test_random_bytes_give_only_a_task_or_a_provider_error():
    rng = random.Random(11)
    client = _client()
    for _ in range(200):
        content = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        with pytest.raises(RetryableError) as e:
            client.parse_task(_raw(content))
        _assert_clean_error(e.value)


# --- probe ---


@pytest.fixture(scope="module")
def good_mp4() -> bytes:
    return encode_mp4(64, 48, 2, fps=2)


def _boxes(data: bytes) -> dict[bytes, tuple[int, int]]:
    found, pos = {}, 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        found[kind] = (pos, size)
        pos += size
    return found


def test_a_good_mp4_probes_to_its_shape(good_mp4):
    info = probe(io.BytesIO(good_mp4))
    assert (info.width, info.height) == (64, 48)
    assert info.duration_s is not None and info.duration_s > 0


def _broken(good: bytes, how: str) -> bytes:
    moov_at, moov_size = _boxes(good)[b"moov"]
    data = bytearray(good)
    if how == "moov payload zeroed":
        data[moov_at + 8 : moov_at + moov_size] = bytes(moov_size - 8)
    elif how == "trak renamed":
        at = good.index(b"trak", moov_at)
        data[at : at + 4] = b"XXXX"
    elif how == "stsd garbage":
        at = good.index(b"stsd", moov_at)
        data[at - 4 : at + 60] = b"\xff" * 64
    elif how == "cut inside moov":
        data = data[: moov_at + 20]
    elif how == "moov missing":
        data = data[:moov_at] + data[moov_at + moov_size :]
    elif how == "moov size impossible":
        data[moov_at : moov_at + 4] = struct.pack(">I", 3)
    return bytes(data)


@pytest.mark.parametrize(
    ("how", "named"),
    [
        ("moov payload zeroed", "moov"),
        ("trak renamed", "no video track"),
        ("stsd garbage", "moov"),
        ("cut inside moov", "truncated"),
        ("moov missing", "no moov box"),
        ("moov size impossible", "impossible size"),
    ],
)
def test_an_mp4_with_a_broken_moov_is_an_invalid_video_saying_what_is_wrong(good_mp4, how, named):
    with pytest.raises(InvalidVideo) as e:
        probe(io.BytesIO(_broken(good_mp4, how)))
    assert named in str(e.value) and e.value.code == "invalid_video"


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b"", "too short"),
        (b"<html><body>Not found</body></html>", "ftyp"),
        (b"\x00\x00\x00\x20ftypisom" + bytes(20), "no moov box"),
        (b"\x00\x00\x00\x20ftypisom" + bytes(24), "truncated"),
    ],
)
def test_bytes_that_are_no_mp4_at_all_are_an_invalid_video(content, named):
    with pytest.raises(InvalidVideo) as e:
        probe(io.BytesIO(content))
    assert named in str(e.value)


def test_a_half_mp4_is_an_invalid_video(good_mp4):
    with pytest.raises(InvalidVideo, match="truncated"):
        probe(io.BytesIO(good_mp4[: len(good_mp4) // 2]))


class _FailingReads(io.BytesIO):
    """A file whose reads fail after the first, as an S3 range GET during an outage."""

    reads = 0

    def read(self, n=-1):
        self.reads += 1
        if self.reads > 1:
            raise ConnectionError("S3 is down")
        return super().read(min(n, 64) if n and n > 0 else 64)


def test_a_failing_read_is_not_an_invalid_video(good_mp4):
    with pytest.raises(ConnectionError):
        probe(_FailingReads(good_mp4))
