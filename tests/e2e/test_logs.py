"""Worker logs through real worker processes: one format for Celery's lines and ours, the
job's id on every line about it, and no secret in either format."""

from __future__ import annotations

import json

import pytest

from producer import enqueue, get
from producer.core.names import Lane
from producer.core.records import TERMINAL
from producer.core.store import store
from tests.e2e.conftest import API_KEY, WEBHOOK_SECRET, eventually


def run_jobs(p, n: int = 3) -> list[str]:
    job_ids = [enqueue(p.request(), settings=p.settings) for _ in range(n)]
    eventually(lambda: all(get(j, settings=p.settings).status in TERMINAL for j in job_ids), 60)
    eventually(lambda: len(p.receiver.verified_events()) >= n, 30)
    return job_ids


def assert_no_secrets(text: str) -> None:
    assert API_KEY not in text
    assert WEBHOOK_SECRET not in text
    assert WEBHOOK_SECRET.removeprefix("whsec_") not in text
    # The sandbox signs its file URLs with ?exp=...&sig=...: no signature reaches a log.
    assert "sig=" not in text


def test_json_log_parses_line_by_line_and_every_job_line_has_its_id(make_pipeline):
    # The provider echoes the key and a failed job's message quotes it: it must not leak.
    p = make_pipeline(env={"VIDEOQUEUE_LOG_FORMAT": "json"}, sandbox={"fail_rate": 0.3})
    job_ids = run_jobs(p, 4)
    p.workers[0].stop()  # its shutdown lines too
    text = p.workers[0].log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(line, dict) and "event" in line for line in lines)
    # Celery's own lines share the format.
    assert any(str(line.get("logger", "")).startswith("celery") for line in lines)
    for job_id in job_ids:
        about = [line for line in lines if job_id in json.dumps(line)]
        assert about, f"no line about {job_id}"
        for line in about:
            assert line.get("job_id") == job_id, line
        # Celery's line about the task that handled it carries the id too.
        assert any(str(line.get("logger", "")).startswith("celery") for line in about)
        assert any(line.get("provider_task_id") for line in about)
    assert_no_secrets(text)


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_no_secret_or_signed_url_reaches_the_log(make_pipeline, fmt):
    """With httpx at its most talkative and failures quoting answers, either format stays
    clean."""
    p = make_pipeline(
        env={"VIDEOQUEUE_LOG_FORMAT": fmt}, sandbox={"fail_rate": 0.5, "error_rate": 0.2}
    )
    job_ids = run_jobs(p, 3)
    text = p.workers[0].log_path.read_text()
    assert_no_secrets(text)
    for job_id in job_ids:
        assert f"job_id={job_id!r}" in text or f'"job_id": "{job_id}"' in text


def test_every_line_of_a_jobs_threads_names_its_job(make_pipeline):
    """A poll's status queries and an upload's parts run on threads, which start with no log
    context: every line they write (here httpx's and urllib3's request lines, turned on) names
    the job whose task it asks about or whose video it uploads, redacted like every line."""
    # Polls first due a minute after submission: none comes due on its own during the test.
    # The jobs' polls are made due together below, so one poll queries all four at once on
    # any host; left to their own timing, their polls met in one batch only by chance.
    env = {"VIDEOQUEUE_LOG_FORMAT": "json", "VIDEOQUEUE_POLL_FIRST_S": "60",
           "VIDEOQUEUE_POLL_CAP_S": "60"}  # fmt: skip
    p = make_pipeline(env=env, workers=0, sandbox={"fast": False, "time_scale": 0.2, "jitter": 0})
    p.start_worker(app="tests.e2e.chatty_worker")
    job_ids = [enqueue(p.request(), settings=p.settings) for _ in range(4)]
    schedule = store(p.settings).schedule

    def waiting_to_poll(job_id: str) -> bool:
        entry = schedule.entry(job_id)
        return entry is not None and entry[0] is Lane.POLL and schedule.holders([job_id]) == [None]

    eventually(lambda: all(waiting_to_poll(j) for j in job_ids), 60)
    # Each video done at the provider, so that the one poll of all four is each job's last.
    eventually(lambda: all(t["status"] == "completed"
                           for t in p.sandbox.stats()["tasks"].values()), 30)  # fmt: skip
    # One transaction: the pump's claim (one script) sees all four due, or none.
    with schedule.redis.pipeline(transaction=True) as pipe:
        for job_id in job_ids:
            schedule.nudge(job_id, client=pipe)
        assert pipe.execute() == [1] * len(job_ids)
    eventually(lambda: all(get(j, settings=p.settings).status in TERMINAL for j in job_ids), 60)
    eventually(lambda: len(p.receiver.verified_events()) >= len(job_ids), 30)
    tasks = {get(j, settings=p.settings).provider_task_id: j for j in job_ids}
    p.workers[0].stop()
    text = p.workers[0].log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    queries = [line for line in lines if line.get("logger") == "httpx" and "GET" in line["event"]]
    status_queries = 0
    for task_id, job_id in tasks.items():
        about = [line for line in queries if f"/{task_id}" in line["event"]]
        status_queries += sum(f"/{task_id} " in line["event"] for line in about)
        assert about, f"no request line about {task_id}"
        for line in about:
            assert line.get("job_id") == job_id, line
    # Several jobs polled at once: their queries went out from the poll's threads.
    assert status_queries >= len(tasks)
    assert any("jobs" in line for line in queries), "no poll of more than one job"
    s3 = [line for line in lines if str(line.get("logger", "")).startswith("urllib3")]
    for job_id in job_ids:
        parts = [line for line in s3 if f"{job_id}.mp4?" in line["event"]
                 and "partNumber=" in line["event"]]  # fmt: skip
        assert parts, f"no part uploaded for {job_id}"
        assert all(line.get("job_id") == job_id for line in parts), parts
    assert_no_secrets(text)
