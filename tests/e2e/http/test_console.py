"""The web console (/console) in a real headless Chromium (Debian's, driven by Playwright),
through a real `videoqueue serve` over real workers, Redis, SeaweedFS and the sandbox.

Set VIDEOQUEUE_CONSOLE_SCREENSHOTS=docs/console to refresh the README's screenshots.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from producer import cancel, enqueue, enqueue_batch, get
from producer.core.keys import list_keys, revoke_key
from producer.core.records import TERMINAL, JobRecord, JobStatus, WebhookState
from producer.core.tenant_policies import set_policy
from tests.e2e.conftest import eventually

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = os.environ.get("VIDEOQUEUE_CONSOLE_SCREENSHOTS")
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no chromium (.ci/run installs Debian's)"
)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # As root (CI, containers) Chromium's own sandbox cannot start.
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def ended(p: Any, job_id: str, timeout_s: float = 60.0) -> JobRecord:
    def check() -> JobRecord | None:
        r = get(job_id, settings=p.settings)
        return r if r.status in TERMINAL else None

    record: JobRecord = eventually(check, timeout_s)
    return record


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(f"{url}/console")
    assert page.url.endswith("/console/signin")
    page.fill("#key", key)
    page.keyboard.press("Enter")  # the form works from the keyboard
    page.wait_for_url(re.compile(r".*/console/jobs$"))


def shot(page: Any, name: str) -> None:
    if SHOTS:
        eventually(lambda: page.evaluate("() => [...document.images].every(i => i.complete)"), 30)
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def confirm(page: Any, button: str) -> str:
    """Click an action's button, check the confirmation asks first, confirm; the results."""
    page.click(button)
    page.wait_for_selector("#confirm")
    assert "?" in page.inner_text("h1")
    page.click("#confirm")
    results: str = page.inner_text("#results")
    return results


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_console_lists_filters_plays_cancels_and_retries_in_chromium(make_gateway, browser):
    # Priced: a tenant with a budget (acme's batch below) may only run priced jobs.
    prices = '{"sora": {"usd_per_second": 0.01}}'
    gw = make_gateway(env={"VIDEOQUEUE_DOWNLOAD_MAX_ATTEMPTS": "1", "VIDEOQUEUE_PRICES": prices})
    p = gw.pipeline
    admin = gw.key("ops", admin=True)
    request = p.request(size="640x360", duration=4)

    done_id = enqueue({**request, "metadata": {"order": "17"}}, tenant="acme", settings=p.settings)
    done = ended(p, done_id)
    assert done.status is JobStatus.COMPLETED, done.error
    p.sandbox.configure(truncate_rate=1.0)
    failed_id = enqueue(request, tenant="acme", settings=p.settings)
    failed = ended(p, failed_id)
    assert failed.error is not None and failed.error.code == "download_failed"
    p.sandbox.configure(truncate_rate=0.0, fast=False, time_scale=20.0)
    running_id = enqueue(request, tenant="globex", settings=p.settings)
    eventually(lambda: get(running_id, settings=p.settings).status is JobStatus.PROCESSING)

    page = browser.new_page(viewport=dict(zip(("width", "height"), WIDTHS["desktop"], strict=True)))
    sign_in(page, gw.url, admin)
    rows = page.locator("#rows tr")
    assert rows.count() == 3
    assert page.locator(f"#rows a[href='/console/jobs/{done_id}']").count() == 1
    # The poster thumbnail in the list decodes with its real size.
    thumb = page.locator(f"#rows img[src='/console/jobs/{done_id}/poster']")
    thumb.wait_for()
    eventually(lambda: thumb.evaluate("i => i.complete && i.naturalWidth") > 0, 30)
    shot(page, "jobs-1280")

    page.select_option("select[name=status]", "failed")
    page.click("form.filters button[type=submit]")
    assert [a.inner_text() for a in page.locator("#rows td a").all()] == [failed_id]
    page.goto(f"{gw.url}/console/jobs?meta_key=order&meta_value=17")
    assert [a.inner_text() for a in page.locator("#rows td a").all()] == [done_id]

    # A job: its poster, its video playing, its timeline.
    page.click(f"text={done_id}")
    page.wait_for_selector("#player")
    poster = page.locator("#poster")
    eventually(lambda: poster.evaluate("i => i.complete && i.naturalWidth") > 0, 30)
    natural = poster.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert done.output is not None and done.output.poster is not None
    assert natural == [done.output.poster.width, done.output.poster.height]
    video = page.locator("#player")
    eventually(lambda: video.evaluate("v => v.readyState") >= 3, 30)  # HAVE_FUTURE_DATA
    video.evaluate("v => { v.muted = true; return v.play(); }")
    eventually(lambda: video.evaluate("v => v.currentTime") > 0.2, 30)
    assert "enqueued" in page.inner_text(".timeline")
    assert "completed" in page.inner_text(".timeline")
    shot(page, "job-1280")

    # Cancel the running job, after a confirmation.
    page.goto(f"{gw.url}/console/jobs/{running_id}")
    assert "cancelled" in confirm(page, "#action-cancel")
    assert get(running_id, settings=p.settings).status is JobStatus.CANCELLED

    # Retry the failed one: it is copied again, without a new provider task.
    page.goto(f"{gw.url}/console/jobs/{failed_id}")
    assert "download_failed" in page.inner_text("#error-words")
    shot(page, "job-failed-1280")
    assert "again" in confirm(page, "#action-retry")
    retried = ended(p, failed_id)
    assert retried.status is JobStatus.COMPLETED, retried.error
    assert retried.provider_task_id == failed.provider_task_id

    # A batch's page: a bar per status, and its cancel asks first with the count.
    set_policy("acme", {"max_in_flight": 5, "budget_usd": 20.0}, settings=p.settings)
    batch_id = enqueue_batch([request] * 3, tenant="acme", settings=p.settings)
    page.goto(f"{gw.url}/console/batches/{batch_id}")
    assert page.locator(".bars progress").count() >= 1
    shot(page, "batch-1280")

    # The same pages at a phone's width.
    phone = browser.new_page(viewport=dict(zip(("width", "height"), WIDTHS["phone"], strict=True)))
    sign_in(phone, gw.url, admin)
    shot(phone, "jobs-390")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    phone.goto(f"{gw.url}/console/jobs/{done_id}")
    phone.wait_for_selector("#player")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    shot(phone, "job-390")
    for name in ("fleet", "batches"):
        page.goto(f"{gw.url}/console/{name}")
        shot(page, f"{name}-1280")
        phone.goto(f"{gw.url}/console/{name}")
        shot(phone, f"{name}-390")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390, name


@pytest.mark.timeout(180)
def test_console_hides_other_tenants_refuses_forged_posts_and_sends_a_strict_csp(
    make_gateway, browser
):
    gw = make_gateway()
    p = gw.pipeline
    theirs = enqueue(p.request(), tenant="globex", settings=p.settings)
    mine = enqueue(p.request(), tenant="acme", settings=p.settings)
    key = gw.key("acme")

    page = browser.new_page()
    sign_in(page, gw.url, key)
    assert [a.inner_text() for a in page.locator("#rows td a").all()] == [mine]
    # Asking for another tenant's jobs by filter shows this tenant's only.
    page.goto(f"{gw.url}/console/jobs?tenant=globex")
    assert [a.inner_text() for a in page.locator("#rows td a").all()] == [mine]
    for path in (f"/console/jobs/{theirs}", f"/console/jobs/{theirs}/video",
                 f"/console/jobs/{theirs}/poster"):  # fmt: skip
        assert page.goto(f"{gw.url}{path}").status == 404
    answer = page.goto(f"{gw.url}/console/jobs/{mine}")
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp

    # The session's cookie: HttpOnly, SameSite=Strict, a random id (never the key).
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "vq_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert key not in cookie["value"] and not cookie["value"].startswith("vq_")

    # An action without the session's CSRF token is refused, with it it is asked to confirm.
    form = {"action": "cancel", "job_id": mine, "confirmed": "1"}
    assert page.request.post(f"{gw.url}/console/actions", form=form).status == 403
    form["csrf"] = "forged"
    assert page.request.post(f"{gw.url}/console/actions", form=form).status == 403
    assert get(mine, settings=p.settings).status is not JobStatus.CANCELLED
    # Another tenant's job is not found by an action either.
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    forged = {"action": "cancel", "job_id": theirs, "csrf": token}
    other = page.request.post(f"{gw.url}/console/actions", form=forged)
    assert other.status == 404

    # The list is live: a job cancelled elsewhere shows as cancelled without a reload.
    p.sandbox.configure(fast=False, time_scale=20.0)  # it stays unfinished until cancelled
    slow = enqueue(p.request(), tenant="acme", settings=p.settings)
    page.goto(f"{gw.url}/console/jobs")
    assert slow in page.inner_text("#rows") and "cancelled" not in page.inner_text("#rows")
    assert cancel(slow, settings=p.settings).status is JobStatus.CANCELLED
    eventually(lambda: "cancelled" in page.inner_text("#rows"), 30)

    # Revoking the key ends its sessions at once.
    (listed,) = [k for k in list_keys(p.settings) if k.tenant == "acme"]
    revoke_key(listed.id, p.settings)
    page.goto(f"{gw.url}/console/jobs")
    assert page.url.endswith("/console/signin")
    # The service's log carries no key and no session id.
    log = gw.logfile.read_text()
    assert key not in log and cookie["value"] not in log
    assert httpx.get(f"{gw.url}/healthz").status_code == 200


@pytest.mark.timeout(240)
def test_console_bulk_retries_the_last_hours_download_failures_and_replays_a_dead_webhook(
    make_gateway, browser
):
    gw = make_gateway(env={"VIDEOQUEUE_DOWNLOAD_MAX_ATTEMPTS": "1"})
    p = gw.pipeline
    p.sandbox.configure(truncate_rate=1.0)
    failed = [enqueue(p.request(), tenant="acme", settings=p.settings) for _ in range(2)]
    assert all(ended(p, j).status is JobStatus.FAILED for j in failed)
    p.sandbox.configure(truncate_rate=0.0)
    fine = enqueue(p.request(), tenant="acme", settings=p.settings)
    assert ended(p, fine).status is JobStatus.COMPLETED

    page = browser.new_page()
    sign_in(page, gw.url, gw.key("ops", admin=True))
    page.goto(f"{gw.url}/console/jobs?status=failed&error=download_failed&within=1h")
    assert sorted(a.inner_text() for a in page.locator("#rows td a").all()) == sorted(failed)
    page.click("text=Retry failed jobs matching this filter")
    assert page.inner_text("#count").startswith("2 ")  # the count, before anything is done
    assert all(get(j, settings=p.settings).status is JobStatus.FAILED for j in failed)
    page.click("#confirm")
    assert page.locator("#results li").count() == 2
    assert all(ended(p, j).status is JobStatus.COMPLETED for j in failed)
    assert p.sandbox.stats()["totals"]["creates"] == 3  # copied again: no new provider task

    # A job whose webhook was dead-lettered: replayed from its page, after a confirmation.
    p.receiver.fail_first = 1000
    dead = enqueue(p.request(), tenant="acme", settings=p.settings)

    def webhook_state() -> WebhookState | None:
        hook = get(dead, settings=p.settings).webhook
        return hook.state if hook else None

    eventually(lambda: webhook_state() is WebhookState.DEAD, 60)
    p.receiver.fail_first = 0
    page.goto(f"{gw.url}/console/jobs/{dead}")
    assert "dead letter" in page.inner_text(".timeline")
    assert "delivered" in confirm(page, "#action-replay")
    assert webhook_state() is WebhookState.DELIVERED
