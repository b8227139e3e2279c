"""The ledger through real workers and the sandbox, which bills every task it makes
(`usd_per_second`) and lists each charge: for every job, what the ledger charged is what the
provider billed, nothing stays reserved once jobs end, and a request (or a whole batch) that
would pass its tenant's budget is refused with nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from ops.admin import retry_job
from producer import (
    BudgetExceeded,
    InvalidRequest,
    JobStatus,
    cancel,
    cancel_batch,
    enqueue,
    enqueue_batch,
    get,
    get_batch,
    wait,
)
from producer.core.ledger import Ledger
from producer.core.records import JobRecord
from producer.core.scripts import _read
from producer.core.settings import Settings
from producer.core.store import store
from producer.core.tenant_policies import set_policy
from producer.usage import usage
from tests.e2e.conftest import Pipeline, env_of, eventually
from tests.e2e.test_recovery import SHORT_LEASE, _kill_host, _polling, _submitting

PRICE = 0.1  # USD per second of sora; the tests' requests ask for 2 s: 0.2 a task
PRICES = {"VIDEOQUEUE_PRICES": json.dumps({"sora": {"usd_per_second": PRICE}})}
BILLS = {"usd_per_second": {"sora": PRICE}}
ROOT = Path(__file__).parents[2]


def _tasks(record: JobRecord) -> list[str]:
    """Every provider task the job ever had (the current one and those resubmissions
    replaced)."""
    current = [record.provider_task_id] if record.provider_task_id else []
    return [t.task_id for t in record.replaced_tasks] + current


def _assert_charged_what_was_billed(p: Pipeline, ids: list[str], tenant: str = "default") -> None:
    """For every job: charged == the sandbox's bills for its tasks, nothing reserved; and the
    tenant's ledger is the sum of its jobs."""
    bills = p.sandbox.stats()["charges"]
    records = [get(i, settings=p.settings) for i in ids]
    for r in records:
        assert r.status.value in ("completed", "failed", "cancelled"), r.status
        billed = sum(bills.get(t, 0.0) for t in _tasks(r))
        assert r.cost.charged_usd == pytest.approx(billed), (r.id, r.status, r.error)
        assert r.cost.reserved_usd == 0
    (mine,) = usage(tenant=tenant, settings=p.settings)
    assert mine.charged_usd == pytest.approx(sum(r.cost.charged_usd for r in records))
    assert mine.reserved_usd == 0


def _ended(p: Pipeline, job_id: str, timeout_s: float = 60) -> JobRecord:
    return wait(job_id, timeout_s, settings=p.settings)


def test_every_job_is_charged_what_the_provider_billed_and_nothing_stays_reserved(
    make_pipeline,
):
    """Completed jobs are charged their task; a job cancelled before its create and one the
    provider refused (never a task) are released in full."""
    p = make_pipeline(sandbox=BILLS, env=PRICES, workers=0)
    done = [enqueue(p.request(), settings=p.settings) for _ in range(3)]
    never_sent = enqueue(p.request(), settings=p.settings)
    refused = enqueue(p.request(size="4000x4000"), settings=p.settings)  # the sandbox's 400
    assert get(never_sent, settings=p.settings).cost.reserved_usd == pytest.approx(0.2)
    assert usage(tenant="default", settings=p.settings)[0].reserved_usd == pytest.approx(1.0)
    cancel(never_sent, settings=p.settings)
    assert usage(tenant="default", settings=p.settings)[0].reserved_usd == pytest.approx(0.8)
    p.start_worker()
    for job_id in [*done, refused]:
        _ended(p, job_id)
    assert get(refused, settings=p.settings).status is JobStatus.FAILED
    assert p.sandbox.stats()["totals"]["tasks"] == 3
    _assert_charged_what_was_billed(p, [*done, never_sent, refused])
    assert get(done[0], settings=p.settings).cost.charged_usd == pytest.approx(0.2)
    assert get(refused, settings=p.settings).cost.charged_usd == 0

    def webhook_cost(job_id: str) -> dict | None:
        bodies = [json.loads(d.body)["data"] for d in p.receiver.deliveries]
        return next((b["cost"] for b in bodies if b["id"] == job_id), None)

    assert eventually(lambda: webhook_cost(done[0]), 30) == {"reserved_usd": 0.0,
                                                             "charged_usd": 0.2}  # fmt: skip
    assert eventually(lambda: webhook_cost(refused), 30) == {"reserved_usd": 0.0,
                                                             "charged_usd": 0.0}  # fmt: skip


@pytest.mark.parametrize(
    ("report_cost", "table_usd"),
    [(False, PRICE), (True, 0.5)],
    ids=["by the price table", "by the provider's reported cost"],
)
def test_a_job_that_failed_after_its_create_is_charged_what_the_provider_billed(
    make_pipeline, report_cost, table_usd
):
    """Where the answer reports the task's cost (usage.cost) the ledger charges that, even
    when the price table says otherwise."""
    prices = {"VIDEOQUEUE_PRICES": json.dumps({"sora": {"usd_per_second": table_usd}})}
    p = make_pipeline(sandbox={**BILLS, "fail_rate": 1.0, "report_cost": report_cost}, env=prices)
    job_id = enqueue(p.request(), settings=p.settings)
    record = _ended(p, job_id)
    assert record.status is JobStatus.FAILED and record.provider_task_id
    assert record.cost.charged_usd == pytest.approx(0.2)
    _assert_charged_what_was_billed(p, [job_id])


def test_a_job_cancelled_after_its_create_is_charged_what_the_provider_billed(make_pipeline):
    p = make_pipeline(sandbox={**BILLS, "fast": False}, env=PRICES)
    job_id = enqueue(p.request(), settings=p.settings)
    eventually(lambda: get(job_id, settings=p.settings).provider_task_id, 30)
    cancel(job_id, settings=p.settings)
    task = get(job_id, settings=p.settings).provider_task_id
    # Its next poll cancels the task upstream (the sandbox forgets it, its bill stays).
    eventually(lambda: task not in p.sandbox.stats()["tasks"], 30)
    record = get(job_id, settings=p.settings)
    assert record.status is JobStatus.CANCELLED and record.cost.charged_usd == pytest.approx(0.2)
    _assert_charged_what_was_billed(p, [job_id])


@pytest.mark.parametrize("there", [_submitting, _polling], ids=["mid-submit", "mid-poll"])
def test_a_worker_killed_between_the_create_and_the_end_settles_each_job_once(make_pipeline, there):
    knob = "create" if there is _submitting else "status"
    p = make_pipeline(
        sandbox={**BILLS, "slow_rate": 1.0, "slow_s": 2.5, "slow_routes": [knob]},
        env={**PRICES, **SHORT_LEASE},
    )
    ids = [enqueue(p.request(), settings=p.settings) for _ in range(2)]
    eventually(lambda: there(p), 30, every_s=0.02)
    _kill_host(p)
    p.sandbox.configure(slow_rate=0.0)
    records = [_ended(p, i, 90) for i in ids]
    assert all(r.status is JobStatus.COMPLETED for r in records), [r.error for r in records]
    assert p.sandbox.stats()["totals"]["tasks"] == 2  # one task each, billed once
    _assert_charged_what_was_billed(p, ids)
    assert all(r.cost.charged_usd == pytest.approx(0.2) for r in records)


def test_a_resubmitted_job_adds_only_what_its_new_task_costs(make_pipeline):
    p = make_pipeline(sandbox={**BILLS, "fail_rate": 1.0}, env=PRICES)
    job_id = enqueue(p.request(), settings=p.settings)
    assert _ended(p, job_id).cost.charged_usd == pytest.approx(0.2)
    p.sandbox.configure(fail_rate=0.0)
    again = retry_job(p.settings, job_id, resubmit=True)
    assert again.cost.reserved_usd == pytest.approx(0.2)  # the new task's estimate, held
    assert usage(tenant="default", settings=p.settings)[0].reserved_usd == pytest.approx(0.2)
    record = _ended(p, job_id)
    assert record.status is JobStatus.COMPLETED and len(_tasks(record)) == 2
    assert record.cost.charged_usd == pytest.approx(0.4)
    _assert_charged_what_was_billed(p, [job_id])


def _usage_dialect(tmp_path: Path) -> dict[str, str]:
    """A router dialect that also reads the answer's `usage` (the sandbox's report_cost puts
    the task's bill there in every answer): so jobs have usage for their batch to sum."""
    shipped = (ROOT / "worker" / "dialects" / "router.toml").read_text()
    answer = shipped.replace("\n[answer]\n", '\n[answer]\nusage = ["usage"]\n')
    assert answer != shipped
    (tmp_path / "router.toml").write_text(answer)
    return {"VIDEOQUEUE_DIALECTS_DIR": str(tmp_path)}


def test_a_batch_sums_the_usage_of_a_job_its_producer_cancelled(make_pipeline, tmp_path):
    p = make_pipeline(
        sandbox={**BILLS, "fast": False, "report_cost": True},
        env={**PRICES, **_usage_dialect(tmp_path)},
    )
    batch = enqueue_batch([p.request()], settings=p.settings)
    (job_id,) = get_batch(batch, settings=p.settings).job_ids
    eventually(lambda: get(job_id, settings=p.settings).usage, 30)
    cancel(job_id, settings=p.settings)
    assert get_batch(batch, settings=p.settings).usage == {"cost": pytest.approx(0.2)}
    assert get(job_id, settings=p.settings).cost.charged_usd == pytest.approx(0.2)
    st = store(p.settings)  # its usage expires with the batch's other keys
    usage_ms, batch_ms = (
        st.redis.pttl(st.keys.batch_usage(batch)),
        st.redis.pttl(st.keys.batch(batch)),
    )
    assert usage_ms > 0 and abs(usage_ms - batch_ms) < 1000


def test_a_job_run_again_on_the_same_task_adds_nothing_to_its_batch_or_its_charge(
    make_pipeline, tmp_path
):
    """A job whose copy failed is retried (no new task): its batch's usage and its charge
    stay those of its one task."""
    p = make_pipeline(
        sandbox={**BILLS, "report_cost": True, "truncate_rate": 1.0},
        env={**PRICES, **_usage_dialect(tmp_path), "VIDEOQUEUE_DOWNLOAD_MAX_ATTEMPTS": "1"},
    )
    batch = enqueue_batch([p.request()], settings=p.settings)
    (job_id,) = get_batch(batch, settings=p.settings).job_ids
    first = _ended(p, job_id)
    assert first.status is JobStatus.FAILED and first.provider_task_id, first.error
    assert get_batch(batch, settings=p.settings).usage == {"cost": pytest.approx(0.2)}
    p.sandbox.configure(truncate_rate=0.0)
    again = retry_job(p.settings, job_id)
    assert again.cost.reserved_usd == 0  # no new task: nothing to hold
    eventually(lambda: get(job_id, settings=p.settings).status is JobStatus.COMPLETED, 60)
    eventually(lambda: get_batch(batch, settings=p.settings).done, 10)
    assert get_batch(batch, settings=p.settings).usage == {"cost": pytest.approx(0.2)}
    assert get(job_id, settings=p.settings).cost.charged_usd == pytest.approx(0.2)
    _assert_charged_what_was_billed(p, [job_id])


# --- refusals: no worker needed, nothing written ---


def _priced(settings: Settings) -> Settings:
    return settings.model_copy(update={"prices": {"sora": {"usd_per_second": PRICE}}})


def _keys(settings: Settings) -> dict[bytes, bytes | None]:
    """Every key of the deployment but the tenant's policy, with a dump of its value."""
    client = redis.Redis.from_url(settings.broker_url)
    found = {}
    for key in client.scan_iter(f"{settings.key_prefix}*"):
        found[key] = client.dump(key)
    return found


REQUEST = {"prompt": "a cat", "size": "64x48", "duration": 2}


def test_a_single_job_past_its_budget_is_refused_naming_the_facts_and_writes_nothing(
    bare_settings,
):
    s = _priced(bare_settings)
    set_policy("acme", {"budget_usd": 0.5, "budget_period": "day"}, s)
    kept = [enqueue(REQUEST, tenant="acme", settings=s) for _ in range(2)]
    before = _keys(s)
    with pytest.raises(BudgetExceeded) as e:
        enqueue(REQUEST, tenant="acme", settings=s)
    assert (e.value.tenant, e.value.budget_usd, e.value.period) == ("acme", 0.5, "day")
    assert (e.value.spent_usd, e.value.reserved_usd, e.value.requested_usd) == (0, 0.4, 0.2)
    assert "acme" in str(e.value) and "0.5" in str(e.value) and "0.4" in str(e.value)
    assert _keys(s) == before
    # Another tenant has no budget; a cancel gives the reservation back.
    enqueue(REQUEST, tenant="other", settings=s)
    cancel(kept[0], settings=s)
    enqueue(REQUEST, tenant="acme", settings=s)


def test_a_batch_past_its_budget_is_refused_as_a_whole_and_writes_nothing(bare_settings):
    s = _priced(bare_settings)
    set_policy("acme", {"budget_usd": 1.0}, s)
    enqueue(REQUEST, tenant="acme", settings=s)  # 0.2 reserved
    before = _keys(s)
    with pytest.raises(BudgetExceeded) as e:
        enqueue_batch([REQUEST] * 5, tenant="acme", settings=s)  # 1.0 more: 1.2
    assert e.value.requested_usd == pytest.approx(1.0)
    assert _keys(s) == before
    batch = enqueue_batch([REQUEST] * 4, tenant="acme", settings=s)  # exactly the budget
    assert get_batch(batch, settings=s).total == 4
    assert usage(tenant="acme", settings=s)[0].reserved_usd == pytest.approx(1.0)
    assert usage(tenant="acme", settings=s)[0].remaining_usd == pytest.approx(0.0)


def test_a_batch_whose_budget_shrank_while_it_was_written_is_undone_when_released(
    bare_settings, monkeypatch
):
    """The reservation in release_batch is the atomic check: a batch that passed the check
    before writing, and then would pass the budget, leaves nothing behind."""
    s = _priced(bare_settings)
    set_policy("acme", {"budget_usd": 1.0}, s)
    enqueue(REQUEST, tenant="acme", settings=s)
    before = _keys(s)
    monkeypatch.setattr(Ledger, "check", lambda *_: None)  # as if the budget changed since
    with pytest.raises(BudgetExceeded):
        enqueue_batch([REQUEST] * 5, tenant="acme", settings=s, batch_id="b-refused")
    assert _keys(s) == before
    assert usage(tenant="acme", settings=s)[0].reserved_usd == pytest.approx(0.2)


def test_an_unpriced_model_is_refused_for_a_tenant_with_a_budget_and_free_for_others(
    bare_settings,
):
    s = _priced(bare_settings)
    set_policy("acme", {"budget_usd": 10}, s)
    for call in (
        lambda: enqueue({**REQUEST, "model": "veo"}, tenant="acme", settings=s),
        lambda: enqueue_batch([REQUEST, {**REQUEST, "model": "veo"}], tenant="acme", settings=s),
    ):
        with pytest.raises(InvalidRequest) as e:
            call()
        assert e.value.errors[0]["field"] == "model" and "budget" in str(e.value)
    job_id = enqueue({**REQUEST, "model": "veo"}, tenant="free", settings=s)
    assert get(job_id, settings=s).cost.reserved_usd == 0


def test_usage_prints_one_object_per_tenant_with_charged_reserved_and_remaining(bare_settings):
    s = _priced(bare_settings)
    set_policy("acme", {"budget_usd": 2, "budget_period": "month"}, s)
    enqueue(REQUEST, tenant="acme", settings=s)
    env = {**env_of(s), "VIDEOQUEUE_PRICES": json.dumps({"sora": {"usd_per_second": PRICE}})}
    run = subprocess.run(
        [sys.executable, "-m", "ops", "usage", "--tenant", "acme", "--json"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env}, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert shown["tenant"] == "acme" and shown["charged_usd"] == 0
    assert shown["reserved_usd"] == 0.2 and shown["remaining_usd"] == 1.8
    assert shown["budget_period"] == "month"
    everyone = subprocess.run(
        [sys.executable, "-m", "ops", "usage", "--json"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env}, timeout=60,
    )  # fmt: skip
    assert [u["tenant"] for u in json.loads(everyone.stdout)] == ["acme"]


@pytest.mark.parametrize(
    "at",
    [
        0,
        951782399,
        951782400,
        951868800,
        1709251199,
        1709251200,
        1735689599,
        1735689600,
        4107542400,
        1796515200,
    ],  # fmt: skip
)
def test_the_ledgers_utc_day_and_month_are_the_calendars(redis_url, at):
    """lua/ledger.lua's own calendar (Redis's Lua has no os.date), across leap days, month
    and year ends."""
    from datetime import UTC, datetime

    script = f"local now = tonumber(ARGV[1])\n{_read('ledger')}\nreturn {{ledger_dates()}}"
    client = redis.Redis.from_url(redis_url)
    day, month = client.eval(script, 0, at)
    when = datetime.fromtimestamp(int(at), UTC)
    assert (day.decode(), month.decode()) == (when.strftime("%Y-%m-%d"), when.strftime("%Y-%m"))


def test_a_tenants_charges_land_in_its_providers_and_days(make_pipeline):
    p = make_pipeline(sandbox=BILLS, env=PRICES)
    job_id = enqueue(p.request(), tenant="acme", settings=p.settings)
    assert _ended(p, job_id).status is JobStatus.COMPLETED
    (mine,) = usage(tenant="acme", settings=p.settings)
    assert mine.providers["default"].charged_usd == pytest.approx(0.2)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert usage(tenant="acme", since=today, settings=p.settings)[0].charged_usd == 0.2
    assert usage(tenant="acme", since="2999-01-01", settings=p.settings)[0].charged_usd == 0
    top = store(p.settings).ledger.top(10)
    assert top["acme"] == (pytest.approx(0.2), 0.0) and top["(other)"] == (0.0, 0.0)


def test_a_batch_partly_unpriced_holds_and_gives_back_the_same_amount(bare_settings, tmp_path):
    """A tenant without a budget may run a model one of its providers has no price for: each
    job holds the priced providers' estimate from the batch's release to its end."""
    path = tmp_path / "providers.toml"
    path.write_text("""
[[providers]]
name = "a"
base_url = "https://a.example"
api_key_env = "A_KEY"
prices = { sora = { usd_per_second = 0.1 } }

[[providers]]
name = "b"
base_url = "https://b.example"
api_key_env = "B_KEY"
""")
    s = bare_settings.model_copy(update={"providers_file": path})
    batch = enqueue_batch([REQUEST, REQUEST], tenant="acme", settings=s)
    jobs = get_batch(batch, settings=s).job_ids
    assert [get(j, settings=s).cost.reserved_usd for j in jobs] == [0.2, 0.2]
    assert usage(tenant="acme", settings=s)[0].reserved_usd == pytest.approx(0.4)
    cancel_batch(batch, settings=s)
    assert usage(tenant="acme", settings=s)[0].reserved_usd == 0


def test_under_faults_every_job_of_a_batch_is_charged_exactly_what_was_billed(make_pipeline):
    """Failed generations, creates whose answers were lost (resent with the same key: one
    task, one bill), 5xx before anything took effect, and a cancelled job, all in one batch."""
    p = make_pipeline(
        sandbox={**BILLS, "fail_rate": 0.3, "lost_create_rate": 0.3, "error_rate": 0.1,
                 "error_routes": ["create", "status"], "seed": 7},
        env=PRICES, concurrency=4,
    )  # fmt: skip
    batch = enqueue_batch([p.request(webhook_url=None) for _ in range(16)], settings=p.settings)
    jobs = get_batch(batch, settings=p.settings).job_ids
    cancel(jobs[0], settings=p.settings)
    eventually(lambda: get_batch(batch, settings=p.settings).done, 120, every_s=0.5)
    records = [get(j, settings=p.settings) for j in jobs]
    statuses = {r.status for r in records}
    assert {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED} <= statuses
    assert p.sandbox.stats()["totals"]["idempotent_replays"] >= 1
    _assert_charged_what_was_billed(p, jobs)


def test_a_job_that_timed_out_at_the_provider_is_charged_what_was_billed(make_pipeline):
    p = make_pipeline(sandbox={**BILLS, "stuck_rate": 1.0},
                      env={**PRICES, "VIDEOQUEUE_DEADLINE_S": "2"})  # fmt: skip
    job_id = enqueue(p.request(), settings=p.settings)
    record = _ended(p, job_id)
    assert record.status is JobStatus.FAILED and record.error.code == "timeout"
    assert record.cost.charged_usd == pytest.approx(0.2)
    _assert_charged_what_was_billed(p, [job_id])


def test_a_retry_past_the_budget_is_refused_and_holds_nothing(bare_settings):
    from producer.core.errors import OperationRefused
    from producer.core.records import utcnow_iso

    s = _priced(bare_settings)
    set_policy("acme", {"budget_usd": 0.3}, s)
    job_id = enqueue(REQUEST, tenant="acme", settings=s)

    def failed(r: JobRecord) -> None:  # before its create: it cost nothing
        r.status, r.finished_at = JobStatus.FAILED, utcnow_iso()

    store(s).update(job_id, failed)
    enqueue(REQUEST, tenant="acme", settings=s)  # 0.2 of the 0.3 held by another job
    with pytest.raises(OperationRefused, match="budget"):
        retry_job(s, job_id)
    assert get(job_id, settings=s).status is JobStatus.FAILED
    assert usage(tenant="acme", settings=s)[0].reserved_usd == pytest.approx(0.2)
