"""The console's routes (/console): sign-in, jobs, a job, batches, tenants and providers, and
the operator's actions, each confirmed on a page of its own before it runs.

Pages are rendered on the server (templates/); static/console.js only refreshes the parts
marked live and adds nothing a keyboard cannot reach without it. Every POST carries the
session's CSRF token. Media is streamed through the session (never a presigned URL in a
page): the poster and the MP4 come from our bucket by the job's record.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.templating import Jinja2Templates
from starlette.responses import RedirectResponse, Response

from producer.core.errors import JobNotFound, OperationRefused, Unauthenticated
from producer.core.keys import Principal, authenticate
from producer.core.providers import account, providers
from producer.core.records import JobRecord, JobStatus, Poster, WebhookState
from producer.core.scan import SCAN_WINDOW, JobFilter, JobScan
from producer.core.settings import Settings
from producer.core.store import store
from producer.core.tenant_policies import list_policies
from producer.http.calls import in_thread, on_loop
from producer.http.console import actions, filters, sessions, views

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/console", include_in_schema=False)

PAGE_SIZE = 50
# A strict policy: our own scripts and styles only (no inline script or style), media from
# our own routes, no framing, forms posting back to us only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class SignInRequired(Exception):
    """Raised when a console page is asked for without a live session."""


class Missing(Exception):
    """Raised when a job or batch is unknown here, or another tenant's (the same page)."""


class CsrfRefused(Exception):
    """Raised when a console POST carries no CSRF token, or another session's."""


def secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def session(request: Request) -> sessions.Session:
    found = await on_loop(
        sessions.read_session, _settings(request), request.cookies.get(sessions.COOKIE)
    )
    if found is None:
        raise SignInRequired()
    return found


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    response = templates.TemplateResponse(
        request, name, {"now_s": time.time(), "views": views, **context}, status_code=status_code
    )
    return secured(response)


async def sign_in_redirect(request: Request, _exc: Exception) -> Response:
    return secured(RedirectResponse("/console/signin", status_code=303))


async def csrf_refused(request: Request, _exc: Exception) -> Response:
    return page(request, "message.html", 403, title="Refused",
                message="This form has expired or did not come from this console: "
                "reload the page and try again.")  # fmt: skip


async def _form(request: Request, s: sessions.Session | None = None) -> dict[str, str]:
    """The POSTed form, once its CSRF token matches the session's (or the sign-in cookie's)."""
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    expected = s.csrf if s is not None else request.cookies.get(sessions.SIGNIN_COOKIE)
    if not sessions.tokens_match(expected, form.get("csrf")):
        raise CsrfRefused()
    return form


# --- signing in and out ---


@router.get("")
async def home() -> Response:
    return secured(RedirectResponse("/console/jobs", status_code=303))


@router.get("/signin")
async def signin_page(request: Request) -> Response:
    token = sessions.new_token()
    response = page(request, "signin.html", csrf=token, error=None)
    sessions.set_cookie(request, response, sessions.SIGNIN_COOKIE, token, 3600)
    return response


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await _form(request)
    settings = _settings(request)
    try:
        who = await on_loop(authenticate, form.get("key", "").strip(), settings)
    except Unauthenticated:
        token = sessions.new_token()
        response = page(request, "signin.html", 401, csrf=token,
                        error="That key is not valid (or was revoked).")  # fmt: skip
        sessions.set_cookie(request, response, sessions.SIGNIN_COOKIE, token, 3600)
        return response
    session_id, _ = await on_loop(sessions.open_session, settings, who)
    response = secured(RedirectResponse("/console/jobs", status_code=303))
    sessions.set_cookie(
        request, response, sessions.COOKIE, session_id, settings.console_session_ttl_s
    )
    response.delete_cookie(sessions.SIGNIN_COOKIE, path="/console")
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    s = await session(request)
    await _form(request, s)
    await on_loop(sessions.close_session, _settings(request), request.cookies.get(sessions.COOKIE))
    response = secured(RedirectResponse("/console/signin", status_code=303))
    response.delete_cookie(sessions.COOKIE, path="/console")
    return response


# --- jobs ---


def _scan(settings: Settings) -> JobScan:
    return JobScan(store(settings))


def _listing(request: Request, who: Principal) -> tuple[dict[str, str], JobFilter | str]:
    query = dict(request.query_params)
    try:
        return query, filters.read(query, who)
    except filters.BadFilter as e:
        return query, str(e)


async def _list_context(request: Request, s: sessions.Session) -> dict[str, Any]:
    query, flt = _listing(request, s.principal)
    context: dict[str, Any] = {
        "who": s.principal, "csrf": s.csrf, "q": query, "error": None, "jobs": [],
        "scanned": 0, "next_cursor": None, "window": SCAN_WINDOW, "statuses": list(JobStatus),
        "within": list(filters.WITHIN_S), "filter_query": filters.query_of(query),
        "stale": False,
    }  # fmt: skip
    if isinstance(flt, str):
        context["error"] = flt
        return context
    if flt.batch_id and not s.principal.admin:
        owner = await on_loop(store(_settings(request)).batch_tenant, flt.batch_id)
        if owner != s.principal.tenant:
            return context  # another tenant's batch reads as one with no jobs
    found = await on_loop(
        _scan(_settings(request)).page, flt, cursor=query.get("cursor"), limit=PAGE_SIZE
    )
    context.update(jobs=found.jobs, scanned=found.scanned, next_cursor=found.next_cursor,
                   stale=found.stale_cursor)  # fmt: skip
    return context


@router.get("/jobs")
async def jobs_page(request: Request) -> Response:
    s = await session(request)
    return page(request, "jobs.html", **await _list_context(request, s))


@router.get("/jobs/rows")
async def jobs_rows(request: Request) -> Response:
    """The listing's rows alone: what the live list fetches every few seconds."""
    s = await session(request)
    return page(request, "_rows.html", **await _list_context(request, s))


async def _owned(request: Request, job_id: str, who: Principal) -> JobRecord:
    """The job, if who may see it; another tenant's is not found, like an unknown one."""
    try:
        record = await on_loop(store(_settings(request)).get, job_id)
    except JobNotFound:
        raise Missing() from None
    if not who.admin and record.tenant != who.tenant:
        raise Missing()
    return record


async def missing(request: Request, _exc: Exception) -> Response:
    return page(request, "message.html", 404, title="Not found",
                message="No such job or batch here.")  # fmt: skip


async def _job_context(request: Request, job_id: str) -> dict[str, Any]:
    s = await session(request)
    record = await _owned(request, job_id, s.principal)
    letters: list[dict[str, Any]] = []
    if record.webhook is not None and record.webhook.state is WebhookState.DEAD:
        # Only then: the dead letters are one hash of up to 10,000 (MAX_DEAD_LETTERS).
        letters = await in_thread(actions.dead_letters_of, _settings(request), record.id)
    return {
        "who": s.principal, "csrf": s.csrf, "job": record, "poster": poster_of(record),
        "timeline": views.timeline(record, letters), "dead_letters": letters,
        "error_words": views.error_words(record),
    }  # fmt: skip


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str) -> Response:
    return page(request, "job.html", **await _job_context(request, job_id))


@router.get("/jobs/{job_id}/live")
async def job_live(request: Request, job_id: str) -> Response:
    """The job's status and timeline alone: what the job page refreshes."""
    return page(request, "_job_live.html", **await _job_context(request, job_id))


def poster_of(record: JobRecord) -> Poster | None:
    """The job's poster frame (output.poster), if it has one."""
    return record.output.poster if record.output else None


@router.get("/jobs/{job_id}/poster")
async def job_poster(request: Request, job_id: str) -> Response:
    s = await session(request)
    record = await _owned(request, job_id, s.principal)
    poster = poster_of(record)
    if poster is None:
        raise Missing()
    response = await in_thread(request.app.state.bucket.open, poster, None)
    response.headers["Cache-Control"] = "private, max-age=300"
    return response


@router.get("/jobs/{job_id}/video")
async def job_video(request: Request, job_id: str) -> Response:
    """The MP4, streamed through the session (ranges too, for seeking)."""
    s = await session(request)
    record = await _owned(request, job_id, s.principal)
    if record.output is None:
        raise Missing()
    response = await in_thread(
        request.app.state.bucket.open, record.output, request.headers.get("range")
    )
    response.headers["Content-Disposition"] = "inline"
    response.headers["Cache-Control"] = "private, max-age=300"
    return response


# --- batches ---


@router.get("/batches")
async def batches_page(request: Request) -> Response:
    s = await session(request)
    flt = JobFilter(tenant=None if s.principal.admin else s.principal.tenant)
    # A window's records parsed: heavier than a page, so off the event loop.
    found = await in_thread(_scan(_settings(request)).page, flt, limit=SCAN_WINDOW)
    seen = views.batches_seen(found.jobs)
    batches = []
    st = store(_settings(request))
    for batch_id, _n in seen[:50]:
        try:
            batch = await on_loop(st.get_batch, batch_id, with_jobs=False)
        except JobNotFound:
            continue
        batches.append(views.batch_view(batch, time.time()))
    return page(request, "batches.html", who=s.principal, csrf=s.csrf, batches=batches,
                scanned=found.scanned)  # fmt: skip


@router.get("/batches/{batch_id}")
async def batch_page(request: Request, batch_id: str) -> Response:
    s = await session(request)
    try:
        batch = await on_loop(store(_settings(request)).get_batch, batch_id, with_jobs=False)
    except JobNotFound:
        raise Missing() from None
    if not s.principal.admin and batch.tenant != s.principal.tenant:
        raise Missing()
    return page(request, "batch.html", who=s.principal, csrf=s.csrf,
                view=views.batch_view(batch, time.time()))  # fmt: skip


# --- tenants and providers ---


def _fleet(settings: Settings, who: Principal) -> dict[str, Any]:
    st = store(settings)
    flt = JobFilter(tenant=None if who.admin else who.tenant)
    found = JobScan(st).page(flt, limit=SCAN_WINDOW)
    tenants = views.fleet(found.jobs, "tenant")
    for policy in list_policies(settings) if who.admin else []:
        row = tenants.setdefault(policy.tenant, views.Fleet(policy.tenant))
        row.cap = policy.max_in_flight
        if policy.budget_usd is not None:
            period = "in total" if policy.budget_period == "total" else f"a {policy.budget_period}"
            row.budget = f"${policy.budget_usd:g} {period}"
    charged: dict[str, float] = {}
    for usage in _spend(settings, who):
        row = tenants.setdefault(usage.tenant, views.Fleet(usage.tenant))
        row.spent = f"${usage.spent_usd:,.2f}"
        for name, part in usage.providers.items():
            charged[name] = charged.get(name, 0.0) + part.charged_usd
    by_provider = views.fleet(found.jobs, "provider")
    rows = []
    for p in providers(settings):
        row = by_provider.pop(p.name, views.Fleet(p.name))
        row.cap = p.max_in_flight
        row.rate = f"{p.rate_limit_per_s:g}/s" if p.rate_limit_per_s is not None else ""
        # Slots are taken only under a cap (producer/core/limits.py).
        capped = who.admin and p.max_in_flight is not None
        held = st.redis.zcard(st.keys.in_flight(account(p, settings))) if capped else None
        if p.name in charged:
            row.spent = f"${charged[p.name]:,.2f}"
        rows.append((row, held))
    rows.extend((row, None) for row in by_provider.values())
    return {"tenants": sorted(tenants.values(), key=lambda r: r.name), "providers": rows,
            "scanned": found.scanned}  # fmt: skip


def _spend(settings: Settings, who: Principal) -> list[Any]:
    """What the ledger says each tenant spent (producer.usage), where this build has one."""
    try:
        ledger = importlib.import_module("producer.usage")
    except ImportError:
        return []
    found: list[Any] = ledger.usage(tenant=None if who.admin else who.tenant, settings=settings)
    return found


@router.get("/fleet")
async def fleet_page(request: Request) -> Response:
    s = await session(request)
    context = await in_thread(_fleet, _settings(request), s.principal)
    return page(request, "fleet.html", who=s.principal, csrf=s.csrf, **context)


# --- actions ---


@router.post("/actions")
async def act(request: Request) -> Response:
    """An action: the first POST shows what it will do (with a count for a bulk one) and asks
    to confirm; the second (confirmed=1) does it."""
    s = await session(request)
    form = await _form(request, s)
    name = form.get("action", "")
    if name not in actions.ACTIONS:
        return page(request, "message.html", 400, title="Unknown action", message=name)
    settings = _settings(request)
    try:
        plan = await in_thread(actions.plan, settings, s.principal, name, form)
    except (JobNotFound, filters.BadFilter) as e:
        return page(request, "message.html", 404 if isinstance(e, JobNotFound) else 400,
                    title="Nothing to do", message=str(e))  # fmt: skip
    if form.get("confirmed") != "1":
        return page(request, "confirm.html", who=s.principal, csrf=s.csrf, plan=plan)
    try:
        done = await in_thread(actions.run, settings, plan)
    except OperationRefused as e:
        return page(request, "message.html", 409, title="Refused", message=str(e),
                    back=plan.back)  # fmt: skip
    return page(request, "done.html", who=s.principal, csrf=s.csrf, plan=plan, done=done)
