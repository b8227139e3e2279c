"""Request validation: bad input is refused with the field named."""

import pytest

from producer.core.errors import InvalidRequest
from producer.core.requests import parse_character, parse_request


def _fields(error: InvalidRequest) -> set[str]:
    return {p["field"] for p in error.errors}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"prompt": "x", "size": "1920*1080"}, "size"),
        ({"prompt": "x", "aspect_ratio": "4:3"}, "aspect_ratio"),
        ({"prompt": "x", "duration": 0}, "duration"),
        ({"prompt": "x", "image_url": "file:///etc/passwd"}, "image_url"),
        ({"prompt": "x", "webhook_url": "ftp://example.com/hook"}, "webhook_url"),
        ({"prompt": "x", "metadata": {"n": 1}}, "metadata.n"),
        ({"prompt": "x", "api_format": "soap"}, "api_format"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"storyboard": [{"prompt": "a", "duration": 0}]}, "storyboard.0.duration"),
        ({"prompt": "x", "characters": "char_1"}, "characters"),
        ({"prompt": "x", "priority": "5"}, "priority"),
        ({"prompt": "x", "priority": 1.5}, "priority"),
        ({"prompt": "x", "priority": True}, "priority"),
        ({"prompt": "x", "priority": 1001}, "priority"),
        ({"prompt": "x", "deadline_s": 0}, "deadline_s"),
        ({"prompt": "x", "deadline_s": -3}, "deadline_s"),
        ({"prompt": "x", "deadline_s": "60"}, "deadline_s"),
        ({"prompt": "x", "deadline_s": float("inf")}, "deadline_s"),
        ({"prompt": "x", "deadline_s": 8 * 86_400}, "deadline_s"),
    ],
)
def test_a_bad_field_is_named_in_the_error(request_, field):
    with pytest.raises(InvalidRequest) as e:
        parse_request(request_)
    assert field in _fields(e.value)
    assert field in str(e.value)


@pytest.mark.parametrize(
    "request_",
    [{}, {"prompt": "x", "storyboard": [{"prompt": "a", "duration": 2}]}],
)
def test_exactly_one_of_prompt_and_storyboard(request_):
    with pytest.raises(InvalidRequest, match="exactly one of prompt and storyboard"):
        parse_request(request_)


def test_unknown_fields_are_refused_but_extra_is_forwarded():
    with pytest.raises(InvalidRequest, match="unknown field"):
        parse_request({"prompt": "x", "seed": 4})
    req = parse_request({"prompt": "x", "extra": {"seed": 4, "style": {"a": 1}}})
    assert req.extra == {"seed": 4, "style": {"a": 1}}


def test_a_storyboard_lasts_the_sum_of_its_scenes():
    req = parse_request(
        {"storyboard": [{"prompt": "a", "duration": 2}, {"prompt": "b", "duration": 3}]}
    )
    assert req.total_duration_s == 5


def test_a_non_object_request_is_refused_plainly():
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_request(["prompt"])  # type: ignore[arg-type]


def test_character_reference_images_must_be_http_urls():
    with pytest.raises(InvalidRequest) as e:
        parse_character({"name": "Luna", "reference_images": ["data:image/png;base64,AA"]})
    assert "reference_images" in str(e.value)
    assert parse_character({"name": "Luna"}).name == "Luna"


@pytest.mark.parametrize(
    "url",
    ["http://example.com/a b", "http://example.com/\x00", "https://example.com/\r\nX-Evil: 1",
     "http://[::1", "http://\u2603.com/hook", "http://example.com/\x85"],
)  # fmt: skip
def test_a_webhook_url_an_http_client_would_refuse_is_refused_at_enqueue(url):
    with pytest.raises(InvalidRequest) as e:
        parse_request({"prompt": "x", "webhook_url": url})
    assert _fields(e.value) == {"webhook_url"}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"prompt": "x", "metadata": {"k\ud800": "v"}}, "metadata"),
        ({"prompt": "x", "extra": {"a": ["ok", "\udfff"]}}, "extra.a.1"),
        ({"prompt": "x", "idempotency_key": "\ud800"}, "idempotency_key"),
    ],
)
def test_text_that_is_not_valid_unicode_is_refused_naming_the_field(request_, field):
    with pytest.raises(InvalidRequest) as e:
        parse_request(request_)
    assert field in _fields(e.value)


def test_priority_and_deadline_s_in_range_are_kept():
    request = parse_request({"prompt": "x", "priority": -1000, "deadline_s": 0.5})
    assert request.priority == -1000 and request.deadline_s == 0.5
    assert parse_request({"prompt": "x", "deadline_s": 90}).deadline_s == 90.0
