"""Dialect files: loading, validation, and how the client speaks a dialect on the wire."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import httpx
import pytest

from producer.core.errors import PermanentError
from producer.core.requests import StoredImage, VideoRequest
from producer.core.settings import ApiFormat, Settings
from worker.dialect import (
    SHIPPED,
    DialectError,
    TaskState,
    UncertainCreate,
    available,
    load_dialect,
)
from worker.provider import client_for, kling_jwt

MINIMAL = """
source = "https://example.test/docs"
[create.default]
path = "/v2/jobs"
body = { text = "prompt", "input.model" = "model", secs = { from = "duration", suffix = "s" } }
[query]
path = "/v2/jobs/{id}"
[answer]
status = ["job.phase"]
file_url = ["result.mp4"]
progress = ["job.fraction"]
progress_scale = 100
[states]
running = ["busy"]
done = ["ready"]
failed = ["broken"]
"""


def test_the_shipped_dialects_load_and_validate():
    assert {"router", "openai"} <= set(available())
    for name in available():
        dialect = load_dialect(name)
        assert dialect.name == name and dialect.source


def test_a_user_adds_a_dialect_with_a_file_and_the_client_speaks_it(tmp_path):
    (tmp_path / "acme.toml").write_text(MINIMAL)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"id": "j1", "job": {"phase": "busy"}})
        body = {"id": "j1", "job": {"phase": "READY"}, "result": {"mp4": "http://cdn/v.mp4"}}
        if len(seen) == 2:
            body = {"id": "j1", "job": {"phase": "busy", "fraction": 0.42}}
        return httpx.Response(200, json=body)

    settings = Settings(api_dialect="acme", dialects_dir=tmp_path, api_key="sk-acme")
    client = client_for(settings, http=httpx.Client(transport=httpx.MockTransport(answer)))
    request = VideoRequest(model="m1", prompt="a cat", duration=5)
    task = client.create(request, ApiFormat.OPENAI, "job-1")
    assert (task.id, task.state) == ("j1", TaskState.RUNNING)
    assert seen[0].url.path == "/v2/jobs"
    assert json.loads(seen[0].content) == {"text": "a cat", "input": {"model": "m1"}, "secs": "5s"}
    assert seen[0].headers["Idempotency-Key"] == "job-1"
    running = client.get("j1", ApiFormat.OPENAI)
    assert (running.state, running.progress) == (TaskState.RUNNING, 42)
    done = client.get("j1", ApiFormat.OPENAI)
    assert (done.state, done.video_url) == (TaskState.DONE, "http://cdn/v.mp4")
    assert seen[2].url.path == "/v2/jobs/j1"
    assert client.cancel("j1") is False  # the dialect has no cancel: nothing is sent
    assert len(seen) == 3


def test_a_request_field_the_dialect_has_no_place_for_fails_naming_it(tmp_path):
    (tmp_path / "acme.toml").write_text(MINIMAL)
    client = client_for(Settings(api_dialect="acme", dialects_dir=tmp_path))
    request = VideoRequest(prompt="a cat", image_url="https://example.com/a.jpg")
    with pytest.raises(PermanentError) as e:
        client.create_payload(request, ApiFormat.OPENAI)
    assert e.value.code == "unsupported_request" and "image_url" in str(e.value)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ('[query]\npath = "/v2/jobs"\n', "query.path must contain {id}"),
        ('[states]\ndone = ["ready"]\nfailed = ["ready"]\n', "'ready' is both done and failed"),
        ('[answer]\nstatuss = ["x"]\n', "answer.statuss"),
        ('auth = "basic"\n', "auth"),
        ("[create]\n", "create"),
        ('[lookup]\npath = "/v2/jobs"\n', "lookup.path must contain {key}"),
        ('[lookup]\npath = "/v2/jobs?ref={key}"\n', 'map a body field from "job_id"'),
    ],
)
def test_a_bad_dialect_file_is_refused_naming_the_field(tmp_path, change, named):
    sections = {}
    for block in ("\n" + MINIMAL).split("\n["):
        head = block.split("]", 1)[0].split(".")[0] if "]" in block else ""
        sections.setdefault(head, []).append(block)
    # Replace the changed section (or the top level) with the bad one.
    head = change[1:].split("]", 1)[0] if change.startswith("[") else ""
    sections = {k: v for k, v in sections.items() if k != head or not head}
    text = "\n[".join(b for blocks in sections.values() for b in blocks) + "\n" + change
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(DialectError) as e:
        load_dialect("bad", str(tmp_path))
    assert named in str(e.value) and "bad.toml" in str(e.value)


def test_an_unknown_dialect_names_the_setting_and_the_known_ones():
    with pytest.raises(DialectError) as e:
        load_dialect("nope")
    assert "VIDEOQUEUE_API_DIALECT" in str(e.value) and "router" in str(e.value)


def test_a_user_file_replaces_a_shipped_dialect_of_its_name(tmp_path):
    (tmp_path / "openai.toml").write_text(MINIMAL)
    assert load_dialect("openai", str(tmp_path)).query.path == "/v2/jobs/{id}"
    assert load_dialect("openai").query.path == "/v1/videos/{id}"


def test_openais_create_is_multipart_with_seconds_as_a_string_and_a_size():
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "video_1", "status": "queued"})

    client = client_for(
        Settings(api_dialect="openai"), http=httpx.Client(transport=httpx.MockTransport(answer))
    )
    request = VideoRequest(model="sora-2", prompt="a cat", aspect_ratio="16:9", duration=8)
    client.create(request, ApiFormat.UNIFIED, "job-1")
    sent = seen[0]
    assert sent.url.path == "/v1/videos"
    assert sent.headers["content-type"].startswith("multipart/form-data")
    parts = sent.content.decode()
    for name, value in {"model": "sora-2", "prompt": "a cat", "seconds": "8",
                        "size": "1280x720"}.items():  # fmt: skip
        assert f'name="{name}"\r\n\r\n{value}\r\n' in parts
    with pytest.raises(PermanentError):  # OpenAI has no storyboard
        client.create_payload(
            VideoRequest(storyboard=[{"prompt": "a", "duration": 4}]), ApiFormat.OPENAI
        )


def test_openais_finished_video_is_fetched_from_its_content_route_with_the_key():
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "video_1", "status": "completed"})

    settings = Settings(api_dialect="openai", api_base_url="http://api.test", api_key="sk-1")
    client = client_for(settings, http=httpx.Client(transport=httpx.MockTransport(answer)))
    task = client.get("video_1", ApiFormat.OPENAI)
    assert task.video_url == "http://api.test/v1/videos/video_1/content"
    assert client.credentials().applies_to(httpx.URL(task.video_url))
    assert client.credentials().headers == {"Authorization": "Bearer sk-1"}


def test_a_task_id_cannot_leave_its_path_segment():
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "queued"})

    client = client_for(Settings(), http=httpx.Client(transport=httpx.MockTransport(answer)))
    client.get("../../admin?x=1", ApiFormat.OPENAI)
    assert seen[0].url.raw_path == b"/v1/videos/..%2F..%2Fadmin%3Fx%3D1"


def test_the_kling_token_is_an_hs256_jwt_of_the_access_key_signed_with_the_secret():
    token = kling_jwt("AK123:SK456", now_s=1_000_000)
    head, claims, signature = token.split(".")

    def decode(part: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))

    assert decode(head) == {"alg": "HS256", "typ": "JWT"}
    assert decode(claims) == {"iss": "AK123", "exp": 1_001_800, "nbf": 999_995}
    mac = hmac.new(b"SK456", f"{head}.{claims}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == mac


def test_neither_half_of_a_kling_key_pair_appears_in_an_error():
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401, json={"code": 1002, "message": "bad AK-123456789 or SK-abcdefghij"}
        )

    settings = Settings(api_dialect="kling", api_key="AK-123456789:SK-abcdefghij")
    client = client_for(settings, http=httpx.Client(transport=httpx.MockTransport(answer)))
    with pytest.raises(PermanentError) as e:
        client.get("t1", ApiFormat.OPENAI)
    assert "AK-123456789" not in str(e.value) and "SK-abcdefghij" not in str(e.value)
    assert "[redacted]" in str(e.value)


def test_the_readme_says_what_each_dialect_does_after_an_uncertain_create():
    """The Guarantees table is the dialect files' data, row by row."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### After an uncertain create", 1)[1].split("\n### ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| `")]
    rows = {line.split("|")[1].split()[0].strip("`"): line.split("|")[3] for line in table}
    assert sorted(rows) == sorted(SHIPPED)
    words = {UncertainCreate.RESEND: "resent", UncertainCreate.LOOK_UP: "looked up",
             UncertainCreate.END: "ends `uncertain_create`"}  # fmt: skip
    for name in SHIPPED:
        dialect = load_dialect(name)
        for api_format in dialect.create:
            assert words[dialect.after_uncertain_create(api_format)] in rows[name], name


class _Images:
    """Stored images as a test hands them out: bytes, and a 'presigned' URL."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, image: StoredImage) -> bytes:
        return self.data

    def url(self, image: StoredImage) -> str:
        return f"http://s3.test/{image.bucket}/{image.key}?X-Amz-Signature=secret"


def _stored(data: bytes) -> StoredImage:
    digest = hashlib.sha256(data).hexdigest()
    return StoredImage(bucket="videoqueue", key=f"inputs/{digest}", content_type="image/png",
                       sha256=digest, size_bytes=len(data))  # fmt: skip


def test_a_stored_image_goes_to_openai_as_the_input_reference_file_part():
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "video_1", "status": "queued"})

    client = client_for(
        Settings(api_dialect="openai"), http=httpx.Client(transport=httpx.MockTransport(answer))
    )
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    request = VideoRequest(model="sora-2", prompt="she dances", image_object=_stored(data))
    client.create(request, ApiFormat.OPENAI, "job-1", images=_Images(data))
    head = b'name="input_reference"; filename="input_reference.png"\r\nContent-Type: image/png'
    assert head + b"\r\n\r\n" + data + b"\r\n" in seen[0].content


def test_a_stored_image_goes_to_the_router_as_a_presigned_image_url_kept_out_of_errors():
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        return httpx.Response(400, json={"error": {"message": f"bad {body['image_url']}"}})

    client = client_for(
        Settings(api_dialect="router"), http=httpx.Client(transport=httpx.MockTransport(answer))
    )
    image = _stored(b"\x89PNG\r\n\x1a\n")
    request = VideoRequest(prompt="she dances", image_object=image)
    for api_format in (ApiFormat.OPENAI, ApiFormat.UNIFIED):
        with pytest.raises(PermanentError) as e:
            client.create(request, api_format, "job-1", images=_Images(b""))
        sent = json.loads(seen[-1].content)
        assert sent["image_url"] == f"http://s3.test/videoqueue/{image.key}?X-Amz-Signature=secret"
        assert "secret" not in str(e.value) and "[redacted]" in str(e.value)
    given = VideoRequest(prompt="she dances", image_url="https://example.com/a.jpg")
    assert (
        client.create_payload(given, ApiFormat.OPENAI)["image_url"] == "https://example.com/a.jpg"
    )


def test_a_dialect_without_a_place_for_a_stored_image_fails_the_job_naming_it():
    client = client_for(Settings(api_dialect="replicate"))
    request = VideoRequest(prompt="a cat", image_object=_stored(b"x"))
    with pytest.raises(PermanentError) as e:
        client.create_payload(request, ApiFormat.OPENAI, images=_Images(b"x"))
    assert e.value.code == "unsupported_request" and "input_reference" in str(e.value)


@pytest.mark.parametrize(
    ("field", "named"),
    [
        ('ref = { from = "image_object" }', 'has type "file" or "url"'),
        ('ref = { from = "prompt", type = "file" }', 'from "image_object" only'),
        ("ref = { from = [] }", "at least one field"),
    ],
)
def test_a_bad_image_field_is_refused_naming_it(tmp_path, field, named):
    (tmp_path / "acme.toml").write_text(
        MINIMAL.replace("body = { text", f"body = {{ {field}, text")
    )
    with pytest.raises(DialectError, match=named):
        load_dialect("acme", str(tmp_path))


def test_a_file_field_in_a_json_create_is_refused(tmp_path):
    (tmp_path / "acme.toml").write_text(
        MINIMAL.replace(
            "body = { text", 'body = { ref = { from = "image_object", type = "file" }, text'
        )
    )
    with pytest.raises(DialectError, match='needs encoding = "multipart"'):
        load_dialect("acme", str(tmp_path))
