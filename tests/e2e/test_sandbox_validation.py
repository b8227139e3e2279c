"""Every validation error is a 400 naming the field and the problem, on real HTTP."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.e2e.sandbox_helpers import running
from tests.unit.images import png

SCENE = {"prompt": "a", "duration": 2}

CASES = {
    "unknown model": ("/v1/videos", {"model": "sora-9"}, "model", "invalid_model"),
    "malformed size": ("/v1/videos", {"size": "big"}, "size", "invalid_size"),
    "size with a star": ("/v1/videos", {"size": "64*48"}, "size", "invalid_size"),
    "odd width": ("/v1/videos", {"size": "65x48"}, "size", "invalid_size"),
    "too wide": ("/v1/videos", {"size": "4096x48"}, "size", "invalid_size"),
    "too small": ("/v1/videos", {"size": "8x8"}, "size", "invalid_size"),
    "size not allowed for sora-2": (
        "/v1/videos", {"model": "sora-2", "size": "64x48", "duration": 4}, "size", "invalid_size"),
    "unsupported aspect ratio": (
        "/v1/video/create", {"size": None, "aspect_ratio": "4:3"}, "aspect_ratio",
        "unsupported_aspect_ratio"),
    "aspect ratio and size": (
        "/v1/video/create", {"aspect_ratio": "16:9"}, "size", "invalid_value"),
    "1:1 on sora-2": (
        "/v1/video/create", {"model": "sora-2", "size": None, "aspect_ratio": "1:1",
                             "duration": 4}, "aspect_ratio", "unsupported_aspect_ratio"),
    "duration zero": ("/v1/videos", {"duration": 0}, "duration", "invalid_duration"),
    "duration too long": ("/v1/videos", {"duration": 21}, "duration", "invalid_duration"),
    "duration not a number": ("/v1/videos", {"duration": "ten"}, "duration", "invalid_duration"),
    "duration a bool": ("/v1/videos", {"duration": True}, "duration", "invalid_duration"),
    "sora-2 seconds": (
        "/v1/videos", {"model": "sora-2", "size": "720x1280", "duration": None, "seconds": "5"},
        "duration", "invalid_duration"),
    "storyboard too long": (
        "/v1/videos", {"prompt": None, "duration": None, "storyboard": [SCENE] * 11},
        "storyboard", "invalid_duration"),
    "storyboard and a different duration": (
        "/v1/videos", {"prompt": None, "duration": 3, "storyboard": [SCENE]}, "duration",
        "invalid_duration"),
    "storyboard scene without prompt": (
        "/v1/videos", {"prompt": None, "storyboard": [{"duration": 2}]}, "storyboard[0].prompt",
        "invalid_storyboard"),
    "empty storyboard": (
        "/v1/videos", {"prompt": None, "storyboard": []}, "storyboard", "invalid_storyboard"),
    "both prompt and storyboard": (
        "/v1/videos", {"storyboard": [SCENE]}, "storyboard", "invalid_value"),
    "neither prompt nor storyboard": ("/v1/videos", {"prompt": None}, "prompt", "missing_prompt"),
    "empty prompt": ("/v1/videos", {"prompt": "  "}, "prompt", "invalid_prompt"),
    "unified without prompt": (
        "/v1/video/create", {"prompt": None, "size": None}, "prompt", "missing_prompt"),
    "ftp image_url": (
        "/v1/videos", {"image_url": "ftp://example.com/a.jpg"}, "image_url", "invalid_url"),
    "relative image_url": ("/v1/videos", {"image_url": "/a.jpg"}, "image_url", "invalid_url"),
    "unknown character": (
        "/v1/videos", {"characters": ["char_nope"]}, "characters", "unknown_character"),
    "characters not a list": (
        "/v1/videos", {"characters": "char_x"}, "characters", "invalid_type"),
}  # fmt: skip


@pytest.fixture(scope="module")
def served():
    with running() as pair:
        yield pair


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_bad_create_is_a_400_naming_the_field(served, case):
    sb, client = served
    path, fields, param, code = CASES[case]
    body = {"model": "sora", "prompt": "a cat", "size": "64x48", "duration": 2, **fields}
    tasks_before = sb.stats()["totals"]["tasks"]
    response = client.post(path, json={k: v for k, v in body.items() if v is not None})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error" and error["message"]
    assert sb.stats()["totals"]["tasks"] == tasks_before


def test_the_same_bodies_are_accepted_once_fixed(served):
    """The cases above fail for the reason they name, not because the base body is bad."""
    _, client = served
    base = {"model": "sora", "prompt": "a cat", "size": "64x48", "duration": 2}
    assert client.post("/v1/videos", json=base).status_code == 200
    unified = {k: v for k, v in base.items() if k != "size"} | {"aspect_ratio": "1:1"}
    assert client.post("/v1/video/create", json=unified).status_code == 200


def test_an_input_reference_file_is_checked_as_openai_checks_it(served):
    """An image (by its bytes) of exactly the video's size for OpenAI's models; any image for
    the router's. The sandbox keeps its digest, never its bytes."""
    sb, client = served
    form = {"model": "sora-2", "prompt": "she dances", "size": "720x1280", "seconds": "4"}

    def post(data: bytes, fields: dict[str, str] = form) -> httpx.Response:
        return client.post("/v1/videos", data=fields,
                           files={"input_reference": ("a.png", data, "image/png")})  # fmt: skip

    for data, code in [(b"not an image at all", "invalid_image_format"),
                       (png(1280, 720), "invalid_value")]:  # fmt: skip
        refused = post(data)
        assert refused.status_code == 400, refused.text
        assert (refused.json()["error"]["param"], refused.json()["error"]["code"]) == (
            "input_reference", code)  # fmt: skip
    taken = post(image := png(720, 1280))
    assert taken.status_code == 200, taken.text
    task = sb.stats()["tasks"][taken.json()["id"]]
    assert task["input_reference_sha256"] == hashlib.sha256(image).hexdigest()
    router = post(png(32, 32), {"model": "sora", "prompt": "p", "size": "64x48", "seconds": "2"})
    assert router.status_code == 200, router.text
