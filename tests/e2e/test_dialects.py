"""Each shipped dialect end to end through real workers, against the sandbox speaking it:
create, poll, progress (where the API reports it), completion with the file in S3, failure
with the provider's reason, and a cancel that reaches the provider (where the API has one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pytest

from ops.sandbox.state import FAILURES
from producer import JobStatus, cancel, enqueue, get, wait
from tests.e2e.conftest import BUCKET, eventually

RATIO = {"size": None, "aspect_ratio": "16:9"}  # for APIs that speak aspect ratios only


@dataclass
class Case:
    dialect: str
    api_format: str = "openai"
    request: dict[str, Any] = field(default_factory=dict)
    progress: bool = False
    cancel: bool = False
    api_key: str | None = None
    usage: dict[str, float] | None = None  # what the sandbox reports, where the API does


CASES = {
    "router-openai": Case("router", "openai", progress=True, cancel=True),
    "router-unified": Case("router", "unified", progress=True, cancel=True),
    "openai": Case("openai", progress=True, cancel=True),
    "replicate": Case("replicate", request=RATIO, cancel=True),
    "runway": Case("runway", progress=True, cancel=True),
    "kling": Case("kling", request=RATIO, api_key="ak-test:sk-test-kling-secret"),
    "luma": Case("luma", request=RATIO),
    "seedance": Case(
        "seedance",
        request=RATIO,
        cancel=True,
        usage={"completion_tokens": 1000, "total_tokens": 1000},
    ),
    "wan": Case("wan", cancel=True, usage={"video_duration": 2, "video_count": 1}),
    "openrouter": Case("openrouter", usage={"cost": 0.5}),
    "minimax": Case("minimax", request={"size": None}),
    "veo": Case("veo", request=RATIO),
    "fal": Case(
        "fal",
        request={**RATIO, "model": "fal-ai/sora"},
        cancel=True,
        usage={"inference_time": 2.25},
    ),
}


def _pipeline(make_pipeline, case: Case, env: dict[str, str] | None = None, **knobs):
    env = {"VIDEOQUEUE_API_DIALECT": case.dialect, "VIDEOQUEUE_API_FORMAT": case.api_format,
           **(env or {})}  # fmt: skip
    sandbox = {"dialect": case.dialect, **knobs}
    sandbox["flavor"] = case.dialect if case.dialect in ("router", "openai") else "router"
    if case.api_key:
        sandbox["api_key"] = env["VIDEOQUEUE_API_KEY"] = case.api_key
    return make_pipeline(sandbox=sandbox, env=env)


def _request(p, case: Case) -> dict[str, Any]:
    return {k: v for k, v in p.request(**case.request).items() if v is not None}


def _sandbox_id(provider_task_id: str) -> str:
    return provider_task_id.rsplit("/", 1)[-1]  # Veo's id is an operation's name


@pytest.mark.parametrize("name", CASES)
def test_a_job_completes_with_its_file_in_s3(make_pipeline, s3_client, name):
    case = CASES[name]
    # Slow enough (a few seconds) that polls see the generation part-way.
    p = _pipeline(make_pipeline, case, fast=False, time_scale=0.25, jitter=0)
    job_id = enqueue(_request(p, case), settings=p.settings)
    if case.progress:
        assert eventually(lambda: 0 < (get(job_id, settings=p.settings).progress or 0) < 100, 30)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.output is not None and record.usage == case.usage
    data = s3_client.get_object(Bucket=BUCKET, Key=record.output.key)["Body"].read()
    assert data[4:8] == b"ftyp" and len(data) == record.output.size_bytes
    # The task's own id is in the file's free box: the sandbox's bytes for this very task.
    task_id = _sandbox_id(record.provider_task_id)
    assert task_id.encode() in data
    task = p.sandbox.stats()["tasks"][task_id]
    assert task["creates"] == 1 and task["downloads"] >= 1 and task["status_queries"] >= 1


@pytest.mark.parametrize("name", CASES)
def test_a_failed_generation_fails_the_job_with_the_providers_reason(make_pipeline, name):
    case = CASES[name]
    p = _pipeline(make_pipeline, case, fail_rate=1.0)
    record = wait(enqueue(_request(p, case), settings=p.settings), 60, settings=p.settings)
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    # fal's reason comes in the error answer of its result call, quoted in the message.
    assert any(message in record.error.message for _, message in FAILURES), record.error


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.cancel])
def test_a_cancel_reaches_the_provider(make_pipeline, name):
    case = CASES[name]
    p = _pipeline(make_pipeline, case, stuck_rate=1.0)
    job_id = enqueue(_request(p, case), settings=p.settings)
    task_id = eventually(lambda: get(job_id, settings=p.settings).provider_task_id, 30)
    cancel(job_id, settings=p.settings)
    eventually(lambda: p.sandbox.stats()["totals"]["deleted"] == 1, 30)
    assert _sandbox_id(task_id) not in p.sandbox.stats()["tasks"]
    assert get(job_id, settings=p.settings).status is JobStatus.CANCELLED


def _key_in_query(tmp_path, name: str) -> str:
    """A dialects dir whose `name` dialect sends its key as the `key` query parameter (the
    Gemini API's other way), for the sandbox speaking the shipped one."""
    shipped = (resources.files("worker") / "dialects" / f"{name}.toml").read_text()
    assert 'auth = "x-goog-api-key"' in shipped
    (tmp_path / f"{name}.toml").write_text(shipped.replace(
        'auth = "x-goog-api-key"', 'auth = "key-param"'))  # fmt: skip
    return str(tmp_path)


@pytest.mark.parametrize("key_in", ["header", "query"])
def test_a_dialects_key_never_reaches_the_origin_a_file_url_redirects_to(
    make_pipeline, tmp_path, key_in
):
    """Veo's file URL is on the API's origin and fetched with the key; its 302 to a CDN
    origin must not take the key along, neither as a header nor as a query parameter."""
    case = CASES["veo"]
    env = {}
    if key_in == "query":
        env["VIDEOQUEUE_DIALECTS_DIR"] = _key_in_query(tmp_path, case.dialect)
    p = _pipeline(make_pipeline, case, env=env)
    p.sandbox.configure(cdn_base_url=p.settings.api_base_url.replace("127.0.0.1", "localhost"))
    record = wait(enqueue(_request(p, case), settings=p.settings), 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    totals = p.sandbox.stats()["totals"]
    assert totals["redirects"] >= 1 and totals["downloads"] >= 1
    assert totals["cdn_downloads_with_key"] == 0
