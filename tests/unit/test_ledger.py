"""The ledger's pure rules: what a request costs by a price table, its estimate across the
providers it may go to, and what settling an ended job charges (producer/core/ledger.py)."""

from __future__ import annotations

import pytest

from producer.core.ledger import estimate, new_task, price_usd, reserve, settle
from producer.core.providers import ModelPrice
from producer.core.records import AttemptOutcome, JobRecord, JobStatus, ProviderAttempt
from producer.core.requests import parse_request
from producer.core.settings import Settings

BY_SIZE = ModelPrice(usd_per_second={"720x1280": 0.1, "1024x1792": 0.5})


@pytest.mark.parametrize(
    ("price", "request_fields", "usd"),
    [
        (ModelPrice(usd_per_second=0.1), {"duration": 8}, 0.8),
        (ModelPrice(usd_per_second=0.1), {}, 0.4),  # no duration: default_seconds (4)
        (ModelPrice(usd_per_second=0.1, default_seconds=10), {}, 1.0),
        (ModelPrice(usd_per_job=1.25), {"duration": 20}, 1.25),
        (BY_SIZE, {"size": "1024x1792", "duration": 4}, 2.0),
        (BY_SIZE, {"aspect_ratio": "9:16", "duration": 4}, 0.4),  # 9:16 is 720x1280
        (BY_SIZE, {"duration": 2}, 1.0),  # no size: the table's highest
        (BY_SIZE, {"size": "64x48"}, None),  # a size the table has not: no price
        (ModelPrice(usd_per_job={"64x48": 0.01, "*": 0.3}), {"size": "1280x720"}, 0.3),
        (
            ModelPrice(usd_per_second=0.1),
            {"storyboard": [{"prompt": "a", "duration": 3}, {"prompt": "b", "duration": 2}]},
            0.5,
        ),
    ],  # fmt: skip
)
def test_a_requests_cost_by_a_price(price, request_fields, usd):
    prompt = {} if "storyboard" in request_fields else {"prompt": "x"}
    request = parse_request({**prompt, **request_fields})
    assert price_usd(price, request) == (pytest.approx(usd) if usd is not None else None)


def _settings(tmp_path, prices_a: str, prices_b: str) -> Settings:
    # A file of its own per table: files are read once per path.
    path = tmp_path / f"providers-{abs(hash(prices_a + prices_b))}.toml"
    path.write_text(f"""
[[providers]]
name = "a"
base_url = "https://a.example"
api_key_env = "A_KEY"
{prices_a}

[[providers]]
name = "b"
base_url = "https://b.example"
api_key_env = "B_KEY"
{prices_b}
""")
    return Settings(providers_file=path)


def test_the_estimate_is_the_priciest_provider_and_unknown_where_one_has_no_price(tmp_path):
    s = _settings(tmp_path, 'prices = { sora = { usd_per_second = 0.1 } }',
                  'prices = { "*" = { usd_per_job = 1.5 } }')  # fmt: skip
    assert estimate(parse_request({"prompt": "x", "duration": 4}), s).usd == 1.5
    named = estimate(parse_request({"prompt": "x", "duration": 4, "provider": "a"}), s)
    assert (named.usd, named.priced) == (pytest.approx(0.4), True)
    s = _settings(tmp_path, "prices = { sora = { usd_per_second = 0.1 } }", "")
    unknown = estimate(parse_request({"prompt": "x", "duration": 4}), s)
    assert (unknown.usd, unknown.priced, unknown.unpriced_at) == (pytest.approx(0.4), False, "b")


def _record(**fields) -> JobRecord:
    record = JobRecord(id="job_1", request={"prompt": "x"}, provider="a", **fields)
    reserve(record, 0.4)
    return record


def _attempt(outcome: AttemptOutcome) -> list[ProviderAttempt]:
    return [ProviderAttempt(provider="a", outcome=outcome)]


def _ended(record: JobRecord, status: JobStatus = JobStatus.FAILED) -> JobRecord:
    record.status = status
    settle(record)
    return record


def test_a_job_that_never_reached_a_provider_is_released_and_charged_nothing():
    for attempts in ([], _attempt(AttemptOutcome.REFUSED), _attempt(AttemptOutcome.FAILED)):
        record = _ended(_record(provider_attempts=attempts))
        assert (record.cost.reserved_usd, record.cost.charged_usd) == (0, 0)


def test_a_task_is_charged_its_reported_cost_else_its_price():
    priced = _record(provider_task_id="t1")
    priced.billing.price_usd = 0.4
    assert _ended(priced, JobStatus.CANCELLED).cost.charged_usd == pytest.approx(0.4)
    reported = _record(provider_task_id="t1")
    reported.billing.price_usd, reported.billing.reported_usd = 0.4, 0.35
    assert _ended(reported, JobStatus.COMPLETED).cost.charged_usd == pytest.approx(0.35)
    unpriced = _record(provider_task_id="t1")
    assert _ended(unpriced).cost.charged_usd == 0


def test_an_uncertain_create_is_charged_since_the_provider_may_bill_it():
    for outcome in (AttemptOutcome.UNCERTAIN, AttemptOutcome.SENT):
        record = _record(provider_attempts=_attempt(outcome))
        record.billing.price_usd = 0.4
        assert _ended(record).cost.charged_usd == pytest.approx(0.4)


def test_settling_again_charges_only_what_changed():
    """A step run twice charges once; a create found refused after its job was cancelled is
    refunded; a later report of the task's cost corrects the charge by the difference."""
    record = _record(provider_attempts=_attempt(AttemptOutcome.SENT))
    record.billing.price_usd = 0.4
    _ended(record, JobStatus.CANCELLED)
    settle(record)
    assert record.cost.charged_usd == pytest.approx(0.4)
    record.provider_attempts[0].outcome = AttemptOutcome.REFUSED
    settle(record)
    assert record.cost.charged_usd == 0
    record.provider_task_id = "t1"
    record.billing.reported_usd = 0.5
    settle(record)
    assert record.cost.charged_usd == pytest.approx(0.5)


def test_a_new_task_is_charged_on_top_of_the_old_ones():
    record = _record(provider_task_id="t1")
    record.billing.price_usd = 0.4
    _ended(record)
    new_task(record)
    reserve(record, 0.4)
    record.provider_task_id = "t2"
    record.billing.reported_usd = 0.3
    _ended(record, JobStatus.COMPLETED)
    assert record.cost.charged_usd == pytest.approx(0.7)
    assert record.cost.reserved_usd == 0


def test_the_tenant_money_metrics_name_the_top_tenants_and_sum_the_rest():
    from worker.metrics import _tenant_money

    families = {f.name: f for f in _tenant_money({"acme": (5.0, 1.0), "(other)": (2.5, 0.0)})}
    charged = {
        s.labels["tenant"]: s.value for s in families["videoqueue_tenant_charged_usd"].samples
    }
    assert charged == {"acme": 5.0, "(other)": 2.5}
    held = families["videoqueue_tenant_reserved_usd"].samples
    assert {s.labels["tenant"]: s.value for s in held} == {"acme": 1.0, "(other)": 0.0}
