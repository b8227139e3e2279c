"""Several providers through real workers: a providers file with two sandboxes (or a closed
port), routing by model, slot and name, fallback only when a create certainly did not take
effect, polls at the provider that created the task, and usage summed per batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from ops.sandbox import Sandbox, SandboxConfig
from ops.sandbox.state import key_fingerprint
from producer import JobStatus, enqueue, enqueue_batch, get_batch, wait
from producer.core.errors import InvalidRequest
from producer.core.records import AttemptOutcome
from producer.core.store import store
from tests.e2e.conftest import eventually
from tests.e2e.test_metrics import by, free_port, scrape

KEY_A = "sk-provider-a-0123456789"
KEY_B = "sk-provider-b-9876543210"


@pytest.fixture
def second_sandbox() -> Iterator[Any]:
    """A second provider: `second_sandbox(**knobs)` -> (sandbox, url)."""
    with ExitStack() as stack:

        def serve(**knobs: Any) -> tuple[Sandbox, str]:
            sb = Sandbox(SandboxConfig(**{"api_key": KEY_B, "fast": True, "seed": 2, **knobs}))
            return sb, stack.enter_context(sb.serve(host="127.0.0.1", port=0))

        yield serve


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens: connections are refused


def _providers(tmp_path: Path, *tables: dict[str, Any]) -> Path:
    lines = []
    for table in tables:
        lines.append("[[providers]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path = tmp_path / "providers.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _deploy(make_pipeline, tmp_path, url_a, url_b, a=None, b=None, sandbox=None, env=None):
    """A pipeline whose providers file lists a (url_a; the pipeline's own sandbox unless
    given) then b (url_b), and one worker."""
    p = make_pipeline(sandbox={"api_key": KEY_A, **(sandbox or {})}, env=env, workers=0)
    path = _providers(
        tmp_path,
        {"name": "a", "dialect": "router", "base_url": url_a or p.env["VIDEOQUEUE_API_BASE_URL"],
         "api_key_env": "VQTEST_KEY_A", "models": ["*"], **(a or {})},
        {"name": "b", "dialect": "router", "base_url": url_b, "api_key_env": "VQTEST_KEY_B",
         "models": ["sora", "sora-2"], **(b or {})},
    )  # fmt: skip
    # The single-provider key is not any provider's: a worker that used it would be refused.
    p.env.update({"VIDEOQUEUE_PROVIDERS_FILE": str(path), "VIDEOQUEUE_API_KEY": "sk-unused",
                  "VQTEST_KEY_A": KEY_A, "VQTEST_KEY_B": KEY_B})  # fmt: skip
    p.settings = p.settings.model_copy(update={"providers_file": path})
    p.start_worker()
    return p


def _no_key_in(record: Any) -> None:
    text = record.model_dump_json()
    assert KEY_A not in text and KEY_B not in text


def _creates(sb: Sandbox) -> dict[str, int]:
    return {task_id: t["creates"] for task_id, t in sb.stats()["tasks"].items()}


def test_jobs_over_the_first_providers_cap_complete_at_the_second(
    make_pipeline, tmp_path, second_sandbox
):
    sb_b, url_b = second_sandbox()
    p = _deploy(make_pipeline, tmp_path, None, url_b, a={"max_in_flight": 1},
                sandbox={"fast": False, "time_scale": 0.2, "jitter": 0})  # fmt: skip
    ids = [enqueue(p.request(webhook_url=None), settings=p.settings) for _ in range(4)]
    records = [wait(job_id, 60, settings=p.settings) for job_id in ids]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]
    at_a = {r.provider_task_id for r in records if r.provider == "a"}
    at_b = {r.provider_task_id for r in records if r.provider == "b"}
    creates_a, creates_b = _creates(p.sandbox), _creates(sb_b)
    # One create per job in all, each at the provider its record names; none twice.
    assert set(creates_a) == at_a and set(creates_b) == at_b
    assert len(at_a) + len(at_b) == 4 and at_a and at_b
    assert all(n == 1 for n in [*creates_a.values(), *creates_b.values()])
    # Every poll went to the provider that created the task.
    for sb, mine in ((p.sandbox, at_a), (sb_b, at_b)):
        assert all(t["status_queries"] >= 1 for t in sb.stats()["tasks"].values())
        assert set(sb.stats()["tasks"]) == mine
    for r in records:
        assert [a.outcome for a in r.provider_attempts] == [AttemptOutcome.CREATED]
        _no_key_in(r)


def test_creates_refused_with_429_move_to_the_next_provider(
    make_pipeline, tmp_path, second_sandbox
):
    sb_b, url_b = second_sandbox()
    # The first provider takes one generation at a time and answers 429 to the rest.
    knobs = {"max_concurrent": 1, "fast": False, "time_scale": 0.3, "jitter": 0}
    p = _deploy(make_pipeline, tmp_path, None, url_b, sandbox=knobs)
    ids = [enqueue(p.request(webhook_url=None), settings=p.settings) for _ in range(4)]
    records = [wait(job_id, 60, settings=p.settings) for job_id in ids]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]
    refused = [r for r in records if any(a.outcome is AttemptOutcome.REFUSED
                                         for a in r.provider_attempts)]  # fmt: skip
    assert refused, "the first provider refused none"
    for r in refused:
        assert r.provider_attempts[0].provider == "a"
        assert r.provider_attempts[0].code == "rate_limited"
        assert r.provider_attempts[-1].outcome is AttemptOutcome.CREATED
    creates_a, creates_b = _creates(p.sandbox), _creates(sb_b)
    assert len(creates_a) + len(creates_b) == 4
    assert all(n == 1 for n in [*creates_a.values(), *creates_b.values()])
    assert {r.provider_task_id for r in records if r.provider == "b"} == set(creates_b)


def test_a_provider_refusing_connections_is_skipped(make_pipeline, tmp_path, second_sandbox):
    sb_b, url_b = second_sandbox()
    p = _deploy(make_pipeline, tmp_path, _closed_port_url(), url_b)
    job_id = enqueue(p.request(webhook_url=None), settings=p.settings)
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.provider == "b"
    assert [(a.provider, a.outcome) for a in record.provider_attempts] == [
        ("a", AttemptOutcome.REFUSED),
        ("b", AttemptOutcome.CREATED),
    ]
    assert _creates(sb_b) == {record.provider_task_id: 1}
    _no_key_in(record)


def test_a_create_that_timed_out_is_retried_at_the_same_provider_only(
    make_pipeline, tmp_path, second_sandbox
):
    sb_b, url_b = second_sandbox()
    # Every create at a answers only after the client gave up, though it made the task.
    p = _deploy(make_pipeline, tmp_path, None, url_b,
                sandbox={"slow_rate": 1.0, "slow_s": 2.0, "slow_routes": ["create"]},
                env={"VIDEOQUEUE_API_TIMEOUT_S": "0.5"})  # fmt: skip
    job_id = enqueue(p.request(webhook_url=None), settings=p.settings)
    eventually(lambda: p.sandbox.stats()["totals"]["faults"].get("slow", 0) >= 2, 30)
    p.sandbox.configure(slow_rate=0.0)  # the provider recovers
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.provider == "a"
    outcomes = [(a.provider, a.outcome) for a in record.provider_attempts]
    assert outcomes[0] == ("a", AttemptOutcome.UNCERTAIN)
    assert outcomes[-1] == ("a", AttemptOutcome.CREATED)
    assert {name for name, _ in outcomes} == {"a"}
    # One task at a, its later creates answered from the Idempotency-Key; none at b.
    stats = p.sandbox.stats()
    assert list(_creates(p.sandbox)) == [record.provider_task_id]
    assert stats["totals"]["idempotent_replays"] >= 1
    assert sb_b.stats()["totals"]["creates"] == 0


def test_a_create_that_timed_out_then_was_refused_with_429_stays_at_its_provider(
    make_pipeline, tmp_path, second_sandbox
):
    """a made the task of the first create and its answer never came; the retry there is
    refused with 429. a may hold the task, so the job stays at a: never a task at b."""
    sb_b, url_b = second_sandbox()
    p = _deploy(make_pipeline, tmp_path, None, url_b,
                sandbox={"fault_sequence": {"create": ["hang", "429"]}},
                env={"VIDEOQUEUE_API_TIMEOUT_S": "0.5"})  # fmt: skip
    job_id = enqueue(p.request(webhook_url=None), settings=p.settings)
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.provider == "a"
    assert [(a.provider, a.outcome) for a in record.provider_attempts] == [
        ("a", AttemptOutcome.UNCERTAIN),
        ("a", AttemptOutcome.REFUSED),
        ("a", AttemptOutcome.CREATED),
    ]
    assert sb_b.stats()["totals"]["creates"] == 0
    # One task at a: the third create was answered from the Idempotency-Key.
    assert list(_creates(p.sandbox)) == [record.provider_task_id]
    assert p.sandbox.stats()["totals"]["idempotent_replays"] == 1


def test_a_job_naming_a_provider_goes_there(make_pipeline, tmp_path, second_sandbox):
    sb_b, url_b = second_sandbox()
    p = _deploy(make_pipeline, tmp_path, None, url_b)
    job_id = enqueue(p.request(webhook_url=None, provider="b"), settings=p.settings)
    record = wait(job_id, 30, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    assert record.provider == "b" and _creates(sb_b) == {record.provider_task_id: 1}
    assert p.sandbox.stats()["totals"]["creates"] == 0
    # Unknown providers and models nobody serves are refused at enqueue, naming the field.
    with pytest.raises(InvalidRequest) as e:
        enqueue(p.request(provider="c"), settings=p.settings)
    assert e.value.errors[0]["field"] == "provider"
    with pytest.raises(InvalidRequest) as e:
        enqueue(p.request(provider="b", model="veo-3"), settings=p.settings)
    assert e.value.errors[0]["field"] == "provider"
    with pytest.raises(InvalidRequest) as e:
        enqueue_batch([p.request(provider="c")], settings=p.settings)
    assert e.value.errors[0]["field"] == "provider"


def test_a_jobs_log_lines_and_request_metrics_name_its_provider(
    make_pipeline, tmp_path, second_sandbox
):
    """With two providers, every line about a job that names a provider names the one its
    task is at (by its name in the file: never the other's, nor the single-provider
    settings'), and the request counter counts each provider's creates, status queries and
    downloads under its own name."""
    _, url_b = second_sandbox()
    port = free_port()
    env = {"VIDEOQUEUE_LOG_FORMAT": "json", "VIDEOQUEUE_METRICS_PORT": str(port)}
    p = _deploy(make_pipeline, tmp_path, None, url_b, {"name": "alpha"}, {"name": "beta"}, env=env)
    jobs = {
        enqueue(p.request(webhook_url=None, provider=name), settings=p.settings): name
        for name in ("alpha", "beta")
    }
    for job_id, name in jobs.items():
        record = wait(job_id, 30, settings=p.settings)
        assert record.status is JobStatus.COMPLETED and record.provider == name, record.error

    requests = eventually(lambda: scrape(port).get("videoqueue_provider_requests_total"))
    assert set(by(requests, "provider")) == {"alpha", "beta"}
    for name in ("alpha", "beta"):
        counted = {
            dict(k)["operation"] for k, n in requests.items() if dict(k)["provider"] == name and n
        }
        assert {"create", "status", "download"} <= counted, name
    p.workers[0].stop()
    lines = [json.loads(line) for line in p.workers[0].log_path.read_text().splitlines() if line]
    for job_id, name in jobs.items():
        named = [
            line["provider"]
            for line in lines
            if line.get("job_id") == job_id and "provider" in line
        ]
        assert named and set(named) == {name}, (job_id, name, set(named))


def test_a_batchs_usage_is_summed_over_its_jobs(make_pipeline):
    p = make_pipeline(sandbox={"dialect": "openrouter", "flavor": "router"},
                      env={"VIDEOQUEUE_API_DIALECT": "openrouter"})  # fmt: skip
    batch_id = enqueue_batch([p.request(webhook_url=None) for _ in range(3)], settings=p.settings)
    batch = eventually(lambda: (b := get_batch(batch_id, settings=p.settings)).done and b, 60)
    assert batch.counts == {"completed": 3}
    assert batch.usage == {"cost": 1.5}  # the sandbox reports 0.5 per job


def test_two_accounts_of_one_provider_each_keep_their_own_cap(make_pipeline, tmp_path):
    knobs = {"api_key": KEY_A, "extra_api_keys": [KEY_B], "fast": False, "time_scale": 0.2}
    p = make_pipeline(workers=0, sandbox={**knobs, "jitter": 0})
    url = p.env["VIDEOQUEUE_API_BASE_URL"]
    path = _providers(
        tmp_path,
        {"name": "a", "base_url": url, "api_key_env": "VQTEST_KEY_A", "max_in_flight": 2},
        {"name": "b", "base_url": url, "api_key_env": "VQTEST_KEY_B", "max_in_flight": 2},
    )
    p.env.update({"VIDEOQUEUE_PROVIDERS_FILE": str(path), "VQTEST_KEY_A": KEY_A,
                  "VQTEST_KEY_B": KEY_B})  # fmt: skip
    p.settings = p.settings.model_copy(update={"providers_file": path})
    p.start_worker(concurrency=4)
    ids = [enqueue(p.request(webhook_url=None), settings=p.settings) for _ in range(8)]
    records = [wait(job_id, 90, settings=p.settings) for job_id in ids]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]
    keys = p.sandbox.stats()["keys"]
    a, b = keys[key_fingerprint(KEY_A)], keys[key_fingerprint(KEY_B)]
    assert a["tasks"] + b["tasks"] == 8 and a["tasks"] >= 2 and b["tasks"] >= 2
    assert 1 <= a["max_concurrent"] <= 2 and 1 <= b["max_concurrent"] <= 2


def test_a_worker_does_not_start_with_a_bad_providers_file(tmp_path):
    path = _providers(tmp_path, {"name": "a", "base_url": "http://a.test", "api_key_env": "K",
                                 "dialect": "no-such-dialect"},
                      {"name": "b", "base_url": "not a url", "api_key_env": "K"})  # fmt: skip
    # No broker answers there: a worker that started anyway would wait, and time out here.
    env = {**os.environ, "VIDEOQUEUE_PROVIDERS_FILE": str(path),
           "VIDEOQUEUE_BROKER_URL": _closed_port_url().replace("http", "redis")}  # fmt: skip
    worker = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-c", "1"]
    started = subprocess.run(worker, env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode != 0
    assert str(path) in started.stderr and "providers[1].base_url" in started.stderr
    path.write_text(path.read_text().replace('"not a url"', '"http://b.test"'))
    started = subprocess.run(worker, env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode != 0 and "no-such-dialect" in started.stderr


def test_two_entries_sharing_a_key_keep_its_cap_and_rate_together(make_pipeline, tmp_path):
    """Two entries with one key (two variables, one value), jobs alternating between them:
    the sandbox, which answers 429 to a create over the key's cap and to any request over its
    rate (with room for a second of dispatch delay: the bucket's bound is burst + rate x
    the window), never has to."""
    cap, rate_per_s, burst = 2, 3, 2
    knobs = {"api_key": KEY_A, "fast": False, "time_scale": 0.1, "jitter": 0,
             "max_concurrent": cap, "rps_limit": burst + 3 * rate_per_s}  # fmt: skip
    p = make_pipeline(workers=0, sandbox=knobs)
    url = p.env["VIDEOQUEUE_API_BASE_URL"]
    limits = {"base_url": url, "max_in_flight": cap, "rate_limit_per_s": rate_per_s,
              "rate_burst": burst}  # fmt: skip
    path = _providers(tmp_path, {"name": "a", "api_key_env": "VQTEST_KEY_1", **limits},
                      {"name": "b", "api_key_env": "VQTEST_KEY_2", **limits})  # fmt: skip
    p.env.update({"VIDEOQUEUE_PROVIDERS_FILE": str(path), "VQTEST_KEY_1": KEY_A,
                  "VQTEST_KEY_2": KEY_A, "VIDEOQUEUE_DISPATCH_AHEAD": "8"})  # fmt: skip
    p.settings = p.settings.model_copy(update={"providers_file": path})
    p.start_worker(concurrency=4)
    ids = [enqueue(p.request(webhook_url=None, provider="ab"[i % 2]), settings=p.settings)
           for i in range(8)]  # fmt: skip
    records = [wait(job_id, 90, settings=p.settings) for job_id in ids]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]
    stats = p.sandbox.stats()
    assert stats["totals"]["rate_limited"] == {}
    key = stats["keys"][key_fingerprint(KEY_A)]
    assert key["tasks"] == 8 and key["max_concurrent"] <= cap
    assert {r.provider for r in records} == {"a", "b"}
    assert all(len(r.provider_attempts) == 1 for r in records)


def test_jobs_waiting_for_a_full_provider_do_not_hold_back_another_providers_jobs(
    make_pipeline, tmp_path, second_sandbox
):
    """A hundred jobs due for a provider taking one slow generation at a time (more than any
    claim looks past), then a few for a free provider: those complete within seconds."""
    sb_b, url_b = second_sandbox()
    p = _deploy(make_pipeline, tmp_path, None, url_b, a={"max_in_flight": 1},
                sandbox={"fast": False, "jitter": 0})  # fmt: skip
    st = store(p.settings)
    waiting = [enqueue(p.request(webhook_url=None, provider="a"), settings=p.settings)
               for _ in range(100)]  # fmt: skip
    # Every one routed to a and due again, ahead of what comes next.
    eventually(lambda: st.redis.hlen(st.keys.routes()) >= len(waiting), 30)
    behind = [enqueue(p.request(webhook_url=None, provider="b"), settings=p.settings)
              for _ in range(3)]  # fmt: skip
    started = time.monotonic()
    records = [wait(job_id, 20, settings=p.settings) for job_id in behind]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]
    assert time.monotonic() - started < 15
    assert sb_b.stats()["totals"]["tasks"] == 3
    assert p.sandbox.stats()["keys"][key_fingerprint(KEY_A)]["max_concurrent"] == 1
