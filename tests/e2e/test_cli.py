"""The `videoqueue` command as a user runs it: a real process, real Redis and workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import redis

from producer import JobStatus, get
from producer.core.store import store
from tests.public_objects import SCHEDULER_FIELDS, assert_public

VIDEOQUEUE = shutil.which("videoqueue", path=os.path.dirname(sys.executable))


def run(
    env: dict[str, str],
    *args: str,
    stdin: str | None = None,
    base: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """videoqueue with args, in the environment base (os.environ by default) plus env."""
    argv = [VIDEOQUEUE] if VIDEOQUEUE else [sys.executable, "-m", "ops"]
    return subprocess.run(
        [*argv, *args], input=stdin, capture_output=True, text=True, timeout=90,
        env={**(os.environ if base is None else base), **env},
    )  # fmt: skip


def test_submit_wait_and_status_print_the_job_record(make_pipeline):
    p = make_pipeline()
    submitted = run(p.env, "submit", "-", "--json", stdin=json.dumps(p.request()))
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    waited = run(p.env, "wait", job_id, "--json", "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    status = run(p.env, "status", job_id, "--json")
    record = json.loads(status.stdout)
    assert record["id"] == job_id and record["status"] == "completed"
    assert set(record) >= {"id", "status", "request", "metadata", "provider_task_id", "output",
                           "error", "attempts", "created_at", "updated_at"}  # fmt: skip
    assert set(record["output"]) >= {"bucket", "key", "size_bytes", "sha256", "content_type",
                                     "width", "height", "duration_s"}  # fmt: skip
    assert record["created_at"].endswith("Z") and record["updated_at"].endswith("Z")


def test_webhook_data_and_status_json_are_the_public_job_and_debug_adds_the_schedulers_fields(
    make_pipeline,
):
    p = make_pipeline()
    submitted = run(p.env, "submit", "-", "--json", stdin=json.dumps(p.request()))
    job_id = json.loads(submitted.stdout)["id"]
    delivery = p.receiver.wait_for(lambda d: d.verified, timeout_s=30)
    data = json.loads(delivery.body)["data"]
    assert data["id"] == job_id and data["status"] == "completed"
    assert_public(data, "job")

    # the event is the same on every retry: the webhook's own delivery state is left out
    assert "webhook" not in data

    status = run(p.env, "status", job_id, "--json")
    assert status.returncode == 0, status.stderr
    public = json.loads(status.stdout)
    assert_public(public, "job")
    assert public.keys() == data.keys() | {"webhook"}

    debug = json.loads(run(p.env, "status", job_id, "--debug").stdout)
    # The scheduler's counters, the operator's retries (reruns) and the ledger's notes on the
    # job's task (billing), the stored record's own.
    assert debug.keys() == public.keys() | SCHEDULER_FIELDS | {"reruns", "billing"}
    assert debug["polls"] >= 1 and debug["copy_attempts"] == 1


def test_submit_flags_build_the_request_and_wait_blocks_until_done(make_pipeline):
    p = make_pipeline()
    done = run(p.env, "submit", "--prompt", "a fox", "--size", "64x48", "--duration", "1",
               "--wait", "--json", "--timeout", "60")  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "completed"
    assert record["request"]["prompt"] == "a fox" and record["output"]["width"] == 64


def test_invalid_input_names_the_field_exits_non_zero_and_writes_nothing(make_pipeline):
    p = make_pipeline(workers=0)
    client = redis.Redis.from_url(p.settings.broker_url)
    before = set(client.scan_iter(f"{p.settings.key_prefix}*"))
    bad = run(p.env, "submit", "-", stdin=json.dumps({"prompt": "x", "size": "big"}))
    assert bad.returncode != 0
    assert "size" in bad.stderr
    not_json = run(p.env, "submit", "-", stdin="{prompt: x}")
    assert not_json.returncode != 0 and "not valid JSON" in not_json.stderr
    assert set(client.scan_iter(f"{p.settings.key_prefix}*")) == before
    assert store(p.settings).schedule.total() == 0
    client.close()


def test_status_of_an_unknown_job_says_so(make_pipeline):
    p = make_pipeline(workers=0)
    missing = run(p.env, "status", "job_nope", "--json")
    assert missing.returncode == 1 and "no job with id 'job_nope'" in missing.stderr


def test_character_create_prints_the_providers_id_and_jobs_can_use_it(make_pipeline):
    p = make_pipeline()
    body = {"name": "Luna", "description": "silver hair",
            "reference_images": ["https://example.com/luna.jpg"]}  # fmt: skip
    made = run(p.env, "character", "create", "-", "--json", stdin=json.dumps(body))
    assert made.returncode == 0, made.stderr
    character = json.loads(made.stdout)
    assert character["id"].startswith("char_")
    submitted = run(p.env, "submit", "-", stdin=json.dumps(p.request(characters=[character["id"]])))
    job_id = submitted.stdout.strip()
    waited = run(p.env, "wait", job_id, "--timeout", "60")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert get(job_id, settings=p.settings).status is JobStatus.COMPLETED


def test_cancel_marks_a_queued_job_cancelled(make_pipeline):
    p = make_pipeline(workers=0)
    job_id = run(p.env, "submit", "-", stdin=json.dumps(p.request())).stdout.strip()
    cancelled = run(p.env, "cancel", job_id)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout


# Commands of every kind (the producer's, the operator's, serve), each with one of the bad
# settings below in turn, and a valid input where it reads one.
COMMANDS = [
    (["submit", "--prompt", "x"], None), (["status", "job_x"], None),
    (["batch", "-"], '{"prompt": "x"}'), (["stats"], None), (["retry", "job_x"], None),
    (["jobs", "list"], None), (["webhooks", "dead"], None), (["keys", "list"], None),
    (["keys", "create", "--tenant", "a"], None), (["tenants", "show", "a"], None),
    (["serve", "--port", "0"], None), (["doctor"], None),
]  # fmt: skip
BAD_SETTINGS = [
    # (variable, value, what the line says): a URL's password is never echoed.
    ("VIDEOQUEUE_REDIS_URL", "http://user:hunter2@redis.example/0", "redis://"),
    ("VIDEOQUEUE_BROKER_URL", "nope", "redis://"),
    ("VIDEOQUEUE_POLL_CAP_S", "soon", "number"),
    ("VIDEOQUEUE_WEBHOOK_SCHEDULE_S", "[1,", "Expecting value"),
    ("VIDEOQUEUE_LOG_FORMAT", "xml", "'console' or 'json'"),
]


def test_every_command_refuses_a_bad_setting_with_one_line_naming_it():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOQUEUE_")}
    cases = [(*command, *BAD_SETTINGS[i % len(BAD_SETTINGS)]) for i, command in enumerate(COMMANDS)]

    def refused(case: tuple[list[str], str | None, str, str, str]) -> subprocess.CompletedProcess:
        command, stdin, name, value, _ = case
        # A narrow terminal: the one line must not be wrapped into two.
        return run({name: value, "COLUMNS": "60"}, *command, base=clean, stdin=stdin or "")

    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: the host is shared
        results = list(pool.map(refused, cases))
    for (command, _, name, _, says), result in zip(cases, results, strict=True):
        lines = result.stderr.splitlines()
        assert result.returncode == 2, (command, name, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (command, result.stderr)
        assert name in lines[0] and says in lines[0], (command, lines[0])
        assert "hunter2" not in result.stderr + result.stdout and result.stdout == ""
