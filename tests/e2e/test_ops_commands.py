"""The operator's commands as a real process, against real Redis, S3, sandbox and workers:
jobs list, retry, webhooks dead/replay, stats, doctor, and what every command does when Redis
or S3 is gone."""

from __future__ import annotations

import json
import time

import pytest
from standardwebhooks.webhooks import Webhook

from ops.stack import free_port, redis_server
from producer import enqueue, enqueue_batch, get
from producer.core.names import Lane, account_of
from producer.core.records import (
    TERMINAL,
    ErrorInfo,
    JobRecord,
    JobStatus,
    WebhookState,
    utcnow_iso,
)
from producer.core.schedule import PARKED_BAND_S
from producer.core.store import store
from tests.e2e.conftest import WEBHOOK_SECRET, eventually
from tests.e2e.test_cli import run


def ended(p, job_id: str):
    return eventually(lambda: (r := get(job_id, settings=p.settings)).status in TERMINAL and r, 60)


def test_jobs_list_prints_job_records_filtered_by_status_batch_and_limit(make_pipeline):
    p = make_pipeline(sandbox={"fail_rate": 0.5, "seed": 3})
    job_ids = [enqueue(p.request(), settings=p.settings) for _ in range(6)]
    records = [ended(p, j) for j in job_ids]
    failed = {r.id for r in records if r.status is JobStatus.FAILED}
    assert failed and len(failed) < len(job_ids)

    listed = run(p.env, "jobs", "list", "--status", "failed", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert isinstance(rows, list) and {r["id"] for r in rows} == failed
    assert all(r["status"] == "failed" and r["error"]["code"] for r in rows)

    newest = json.loads(run(p.env, "jobs", "list", "--limit", "2", "--json").stdout)
    assert [r["id"] for r in newest] == job_ids[::-1][:2]
    assert len(json.loads(run(p.env, "jobs", "list", "--since", "1h", "--json").stdout)) == 6
    future = run(p.env, "jobs", "list", "--since", "2999-01-01T00:00:00Z", "--json")
    assert json.loads(future.stdout) == []

    batch_id = enqueue_batch([p.request(), p.request()], settings=p.settings)
    in_batch = json.loads(run(p.env, "jobs", "list", "--batch", batch_id, "--json").stdout)
    assert len(in_batch) == 2 and all(r["batch_id"] == batch_id for r in in_batch)


def test_retry_of_a_job_failed_at_download_copies_again_without_a_new_provider_task(
    make_pipeline, s3_client
):
    p = make_pipeline(sandbox={"truncate_rate": 1.0}, env={"VIDEOQUEUE_DOWNLOAD_MAX_ATTEMPTS": "1"})
    job_id = enqueue(p.request(), settings=p.settings)
    failed = ended(p, job_id)
    assert failed.status is JobStatus.FAILED and failed.error.code == "download_failed"
    p.sandbox.configure(truncate_rate=0.0)

    retried = run(p.env, "retry", job_id, "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["status"] == "finalizing"
    done = ended(p, job_id)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.provider_task_id == failed.provider_task_id
    stats = p.sandbox.stats()
    assert stats["totals"]["creates"] == 1
    head = s3_client.head_object(Bucket=done.output.bucket, Key=done.output.key)
    assert head["ContentLength"] == done.output.size_bytes
    # Its webhook went out again, now as video.completed.
    eventually(lambda: any(e["type"] == "video.completed" for e in p.receiver.verified_events()))


def test_retry_refuses_a_new_provider_task_unless_resubmit(make_pipeline):
    p = make_pipeline(sandbox={"fail_rate": 1.0})
    job_id = enqueue(p.request(), settings=p.settings)
    failed = ended(p, job_id)
    assert failed.status is JobStatus.FAILED

    refused = run(p.env, "retry", job_id)
    assert refused.returncode == 1
    assert "--resubmit" in refused.stderr and "Traceback" not in refused.stderr
    assert get(job_id, settings=p.settings).status is JobStatus.FAILED
    assert p.sandbox.stats()["totals"]["creates"] == 1

    p.sandbox.configure(fail_rate=0.0)
    resubmitted = run(p.env, "retry", job_id, "--resubmit")
    assert resubmitted.returncode == 0, resubmitted.stderr
    done = ended(p, job_id)
    assert done.status is JobStatus.COMPLETED
    assert done.provider_task_id != failed.provider_task_id and done.resubmits == 1
    assert p.sandbox.stats()["totals"]["creates"] == 2

    not_failed = run(p.env, "retry", job_id)
    assert not_failed.returncode == 1 and "only a failed job" in not_failed.stderr


@pytest.mark.parametrize("routes", ["all", "documented"])
def test_retry_resubmit_cancels_the_old_provider_task(make_pipeline, routes):
    """The old task (here done and billed, its download failed) is cancelled upstream before
    a new one is made, and the record says so; a provider with no cancel route (the
    documented router has no DELETE) leaves it abandoned, and the record says that."""
    cancellable = routes == "all"
    p = make_pipeline(sandbox={"truncate_rate": 1.0, "routes": routes},
                      env={"VIDEOQUEUE_DOWNLOAD_MAX_ATTEMPTS": "1"})  # fmt: skip
    job_id = enqueue(p.request(), settings=p.settings)
    failed = ended(p, job_id)
    assert failed.status is JobStatus.FAILED and failed.error.code == "download_failed"
    p.sandbox.configure(truncate_rate=0.0)

    resubmitted = run(p.env, "retry", job_id, "--resubmit", "--json")
    assert resubmitted.returncode == 0, resubmitted.stderr
    assert p.sandbox.stats()["totals"]["deleted"] == int(cancellable)
    assert (failed.provider_task_id in p.sandbox.stats()["tasks"]) is not cancellable
    done = ended(p, job_id)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.provider_task_id != failed.provider_task_id
    assert [(t.provider, t.task_id, t.cancelled) for t in done.replaced_tasks] == [
        ("default", failed.provider_task_id, cancellable)
    ]


@pytest.mark.parametrize("providers_file", [False, True])
def test_a_job_retried_into_polling_counts_against_max_in_flight(
    make_pipeline, tmp_path, providers_file
):
    """A failed job whose task still runs, retried while another job holds the only slot:
    it is not polled until it has a slot of its own (with a providers file too, where a
    failed job's route is forgotten)."""
    # Generations that outlast any stall of the host (15 min): the test ends them when it has
    # seen what it watches. At 9 s, the first job's task could end before the retry on a
    # loaded host (then it is copied, not polled: status finalizing) and the second's before
    # the retried job was due (then nothing was watched).
    p = make_pipeline(sandbox={"fast": False, "time_scale": 100.0, "jitter": 0},
                      env={"VIDEOQUEUE_MAX_IN_FLIGHT": "1"}, workers=0)  # fmt: skip
    if providers_file:
        path = tmp_path / "providers.toml"
        path.write_text(f'[[providers]]\nname = "a"\nbase_url = "{p.settings.api_base_url}"\n'
                        'api_key_env = "VIDEOQUEUE_API_KEY"\nmax_in_flight = 1\n')  # fmt: skip
        p.env["VIDEOQUEUE_PROVIDERS_FILE"] = str(path)
        p.settings = p.settings.model_copy(update={"providers_file": path})
    p.start_worker()
    st = store(p.settings)
    slots = st.keys.in_flight(account_of(p.env["VIDEOQUEUE_API_KEY"]))
    first = enqueue(p.request(webhook_url=None), settings=p.settings)
    eventually(lambda: get(first, settings=p.settings).provider_task_id)

    def fail(r: JobRecord) -> bool:  # as any failure while the task runs would
        r.status, r.finished_at = JobStatus.FAILED, utcnow_iso()
        r.error = ErrorInfo(code="internal_error", message="failed by the test")
        return True

    st.update(first, fail, after=lambda r, pipe: st.schedule.nudge(r.id, pipe))
    eventually(lambda: st.redis.zcard(slots) == 0)  # its slot given back
    second = enqueue(p.request(webhook_url=None), settings=p.settings)
    eventually(lambda: st.redis.zscore(slots, second) is not None)

    retried = run(p.env, "retry", first, "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["status"] in ("submitted", "processing")
    polls = get(first, settings=p.settings).polls
    # Due at once, its poll is claimed and parked: no slot is free for it.
    polls_lane = st.keys.schedule(Lane.POLL)
    eventually(lambda: (st.redis.zscore(polls_lane, first) or 0) >= PARKED_BAND_S)
    for job_id in (first, second):
        p.sandbox.end_generation(get(job_id, settings=p.settings).provider_task_id or "")
    while True:
        seen = get(first, settings=p.settings).polls, st.redis.zscore(slots, first)
        if st.redis.zscore(slots, second) is None:
            break  # its generation ended: the slot is free for the first
        assert seen == (polls, None), "polled without a slot"
        assert st.redis.zcard(slots) <= 1
        time.sleep(0.1)
    done = ended(p, first)
    assert done.status is JobStatus.COMPLETED, done.error
    assert p.sandbox.stats()["totals"]["creates"] == 2


def test_replay_of_a_dead_lettered_webhook_keeps_its_id_and_body(make_pipeline):
    p = make_pipeline()
    p.receiver.fail_first = 100
    job_id = enqueue(p.request(), settings=p.settings)
    eventually(
        lambda: (
            (r := get(job_id, settings=p.settings)).webhook and r.webhook.state is WebhookState.DEAD
        ),
        30,
    )
    first = p.receiver.deliveries[0]

    dead = run(p.env, "webhooks", "dead", "--json")
    letters = json.loads(dead.stdout)
    assert [(e["id"], e["owner_id"]) for e in letters] == [(first.headers["webhook-id"], job_id)]

    p.receiver.fail_first = 0
    p.receiver.clear()
    replayed = run(p.env, "webhooks", "replay", letters[0]["id"], "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)[0]["ok"] is True
    (delivery,) = p.receiver.deliveries
    assert delivery.headers["webhook-id"] == first.headers["webhook-id"]
    assert delivery.body == first.body
    Webhook(WEBHOOK_SECRET).verify(delivery.body.decode(), dict(delivery.headers))
    assert get(job_id, settings=p.settings).webhook.state is WebhookState.DELIVERED
    assert json.loads(run(p.env, "webhooks", "dead", "--json").stdout) == []
    again = run(p.env, "webhooks", "replay", "--all", "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == []
    unknown = run(p.env, "webhooks", "replay", "msg_nope")
    assert unknown.returncode == 1 and "msg_nope" in unknown.stderr


def test_each_run_of_a_retried_job_ends_in_a_new_webhook_id_and_a_replay_keeps_its_own(
    make_pipeline,
):
    """A job failed (its webhook dead-lettered), retried, failed again and retried into
    completion sends each later end under a webhook-id of its own, the same event type
    included, so a receiver deduping by id takes them all; replaying the first end's dead
    letter afterwards still sends that end's own id and body, and leaves the latest end's
    delivery as it was."""
    p = make_pipeline(sandbox={"truncate_rate": 1.0}, env={"VIDEOQUEUE_DOWNLOAD_MAX_ATTEMPTS": "1"})
    p.receiver.fail_first = 100
    job_id = enqueue(p.request(), settings=p.settings)
    assert ended(p, job_id).status is JobStatus.FAILED
    eventually(lambda: get(job_id, settings=p.settings).webhook.state is WebhookState.DEAD, 30)
    first = p.receiver.deliveries[0]
    p.receiver.fail_first = 0
    p.receiver.clear()

    def run_again() -> JobRecord:
        retried = run(p.env, "retry", job_id)
        assert retried.returncode == 0, retried.stderr
        return eventually(lambda: (r := get(job_id, settings=p.settings)).webhook
                          and r.webhook.state is WebhookState.DELIVERED and r, 60)  # fmt: skip

    assert run_again().status is JobStatus.FAILED
    p.sandbox.configure(truncate_rate=0.0)
    done = run_again()
    assert done.status is JobStatus.COMPLETED and done.reruns == 2
    second, third = p.receiver.deliveries
    assert [e.json["type"] for e in (first, second, third)] == [
        "video.failed", "video.failed", "video.completed"
    ]  # fmt: skip
    assert len({e.headers["webhook-id"] for e in (first, second, third)}) == 3

    p.receiver.clear()
    replayed = run(p.env, "webhooks", "replay", "--all", "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert [r["id"] for r in json.loads(replayed.stdout)] == [first.headers["webhook-id"]]
    (replay,) = p.receiver.deliveries
    assert replay.headers["webhook-id"] == first.headers["webhook-id"]
    assert replay.body == first.body
    assert get(job_id, settings=p.settings).webhook == done.webhook


def test_stats_reports_jobs_by_status_and_the_schedule(make_pipeline):
    p = make_pipeline(workers=0, env={"VIDEOQUEUE_MAX_IN_FLIGHT": "3"})
    for _ in range(2):
        enqueue(p.request(), settings=p.settings)
    shown = run(p.env, "stats", "--json")
    assert shown.returncode == 0, shown.stderr
    snapshot = json.loads(shown.stdout)
    assert snapshot["jobs"]["queued"] == 2 and snapshot["finished"]["completed"] == 0
    assert snapshot["schedule"]["submit"]["due"] == 2
    assert snapshot["parked"] == 2 and snapshot["in_flight_cap"] == 3
    assert "submit" in run(p.env, "stats").stdout


def test_doctor_passes_on_a_healthy_stack_and_names_what_fails(make_pipeline, tmp_path):
    p = make_pipeline(workers=0)
    with redis_server(workdir=tmp_path / "redis") as aof_redis:
        healthy = {**p.env, "VIDEOQUEUE_BROKER_URL": aof_redis}
        ok = run(healthy, "doctor")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "problem" not in ok.stdout
        checks = json.loads(run(healthy, "doctor", "--json").stdout)
        assert all(c["ok"] for c in checks) and len(checks) >= 9

        no_bucket = run({**healthy, "VIDEOQUEUE_S3_BUCKET": "videoqueue-missing"}, "doctor")
        assert no_bucket.returncode == 1
        assert "videoqueue-missing" in no_bucket.stdout and "fix:" in no_bucket.stdout

        bad_key = run({**healthy, "VIDEOQUEUE_API_KEY": "sk-wrong"}, "doctor", "--json")
        failed = {c["name"] for c in json.loads(bad_key.stdout) if not c["ok"]}
        assert bad_key.returncode == 1 and failed == {"provider API key"}

    # The test Redis runs without an append-only file.
    no_aof = run(p.env, "doctor", "--json")
    assert no_aof.returncode == 1
    failed = {c["name"] for c in json.loads(no_aof.stdout) if not c["ok"]}
    assert "Redis persistence (AOF)" in failed


def test_commands_answer_an_outage_with_one_line_and_exit_1(make_pipeline):
    p = make_pipeline(workers=0)
    gone = {**p.env, "VIDEOQUEUE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args in (["status", "job_x"], ["jobs", "list"], ["stats"], ["retry", "job_x"],
                 ["webhooks", "dead"], ["submit", "--prompt", "a fox"]):  # fmt: skip
        answer = run(gone, *args)
        assert answer.returncode == 1, (args, answer.stderr)
        assert "Traceback" not in answer.stderr
        lines = answer.stderr.strip().splitlines()
        assert len(lines) == 1 and "Redis" in lines[0] and "unreachable" in lines[0], args
    no_s3 = {**p.env, "VIDEOQUEUE_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    answer = run(no_s3, "doctor")
    assert answer.returncode == 1 and "S3" in answer.stdout and "Traceback" not in answer.stderr
    assert run(p.env, "--version").stdout.startswith("videoqueue ")


def test_a_webhook_given_up_after_faults_is_listed_as_dead(make_pipeline):
    """A notify step that keeps failing gives the webhook up into the dead letters too."""
    from producer.core.store import store

    p = make_pipeline(workers=0, env={"VIDEOQUEUE_FAULT_MAX_ATTEMPTS": "2"})
    job_id = enqueue(p.request(), settings=p.settings)
    st = store(p.settings)
    st.redis.rpush(st.keys.event_body(job_id), "not a body")  # reading it raises WRONGTYPE
    p.start_worker()
    eventually(
        lambda: (
            (r := get(job_id, settings=p.settings)).webhook and r.webhook.state is WebhookState.DEAD
        ),
        30,
    )
    letters = json.loads(run(p.env, "webhooks", "dead", "--json").stdout)
    assert [e["owner_id"] for e in letters] == [job_id]
    assert letters[0]["last_error"].startswith("internal_error")
    st.redis.delete(st.keys.event_body(job_id))
    replay = run(p.env, "webhooks", "replay", "--all", "--json")
    assert replay.returncode == 1 and "no longer kept" in replay.stdout


def test_the_job_index_forgets_jobs_older_than_the_retention(make_pipeline):
    from producer.core.store import store

    p = make_pipeline(workers=0, env={"VIDEOQUEUE_RECORD_TTL_S": "0.5"})
    first = enqueue(p.request(), settings=p.settings)
    time.sleep(0.6)
    second = enqueue(p.request(), settings=p.settings)
    batch_id = enqueue_batch([p.request()], settings=p.settings)
    st = store(p.settings)
    indexed = {m.decode() for m in st.redis.zrange(st.keys.job_index(), 0, -1)}
    assert first not in indexed and second in indexed and len(indexed) == 2
    assert get(first, settings=p.settings).id == first  # the record itself is still there
    assert {r["batch_id"] for r in json.loads(run(p.env, "jobs", "list", "--json").stdout)} == {
        None,
        batch_id,
    }
