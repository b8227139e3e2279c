"""The console's pure parts: its filters (what a key may see) and a job's timeline."""

from __future__ import annotations

import pytest

from producer.core.keys import Principal
from producer.core.records import (
    AttemptOutcome,
    ErrorInfo,
    JobRecord,
    JobStatus,
    ProviderAttempt,
    WebhookDelivery,
    WebhookState,
)
from producer.http.console import filters, views

ADMIN = Principal("key_a", "ops", admin=True)
ACME = Principal("key_b", "acme", admin=False)


def test_a_tenant_key_sees_its_own_tenant_whatever_the_query_asks():
    assert filters.read({"tenant": "globex"}, ACME).tenant == "acme"
    assert filters.read({}, ACME).tenant == "acme"
    assert filters.read({"tenant": "globex"}, ADMIN).tenant == "globex"
    assert filters.read({}, ADMIN).tenant is None


def test_filters_read_every_field_and_name_a_bad_one():
    f = filters.read(
        {"status": "failed", "error": "download_failed", "within": "1h", "meta_key": "k",
         "meta_value": "v", "model": "sora", "provider": "p", "batch": "b"},
        ADMIN, now_s=10_000.0,
    )  # fmt: skip
    assert f.statuses == (JobStatus.FAILED,) and f.error_code == "download_failed"
    assert f.since_s == 10_000.0 - 3600 and (f.meta_key, f.meta_value) == ("k", "v")
    assert (f.model, f.provider, f.batch_id) == ("sora", "p", "b")
    assert filters.read({"from": "2026-12-06T14:30"}, ADMIN).since_s == 1796567400.0
    for bad, field in ({"status": "done"}, "status"), ({"within": "2y"}, "within"), (
        {"to": "yesterday"}, "to"):  # fmt: skip
        with pytest.raises(filters.BadFilter, match=f"^{field}:"):
            filters.read(bad, ADMIN)


def test_timeline_tells_a_failed_job_in_order_with_its_webhook_answer():
    r = JobRecord(id="job_1", request={"model": "sora"}, created_at="2026-12-06T00:00:00.000Z")
    r.provider_attempts = [
        ProviderAttempt(provider="a", outcome=AttemptOutcome.REFUSED, code="429",
                        at="2026-12-06T00:00:01.000Z"),
        ProviderAttempt(provider="b", outcome=AttemptOutcome.CREATED,
                        at="2026-12-06T00:00:02.000Z"),
    ]  # fmt: skip
    r.submitted_at, r.provider_task_id, r.provider = "2026-12-06T00:00:02.000Z", "t1", "b"
    r.polls, r.progress = 4, 60
    r.status, r.finished_at = JobStatus.FAILED, "2026-12-06T00:01:00.000Z"
    r.error = ErrorInfo(code="download_failed", message="truncated")
    r.webhook = WebhookDelivery(
        url="https://x", event_type="video.failed", state=WebhookState.DEAD, attempts=8,
        last_status_code=500,
    )  # fmt: skip
    lines = [m.what for m in views.timeline(r, [])]
    assert lines[:4] == ["enqueued", "create at a: refused", "create at b: created", "submitted"]
    assert lines[4].startswith("polled 4") and lines[5] == "failed"
    assert "dead" in lines[6] and "HTTP 500" in views.timeline(r, [])[6].detail
    words = views.error_words(r)
    assert words is not None and "copying" in words and "truncated" in words


def test_a_job_offers_only_the_actions_that_apply_to_it():
    r = JobRecord(id="job_1", request={})
    assert [a for a, _ in views.job_actions(r)] == ["cancel"]
    r.status = JobStatus.FAILED
    r.webhook = WebhookDelivery(url="https://x", event_type="video.failed", state=WebhookState.DEAD)
    assert [a for a, _ in views.job_actions(r)] == ["retry", "resubmit", "replay"]
    r.status, r.webhook = JobStatus.COMPLETED, None
    assert views.job_actions(r) == []


def test_console_cookies_are_secure_over_https_and_pages_carry_the_csp():
    from fastapi.testclient import TestClient

    from producer.core.settings import Settings
    from producer.http.app import create_app

    app = create_app(Settings())
    for base, secure in (("https://console.example", True), ("http://127.0.0.1", False)):
        with TestClient(app, base_url=base) as client:
            answer = client.get("/console/signin")
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert ("secure" in cookie) is secure
        assert "script-src 'self'" in answer.headers["content-security-policy"]
