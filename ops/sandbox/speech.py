"""How the sandbox speaks the other providers' APIs (``dialect`` other than router/openai).

Written from each provider's own documentation (the same sources worker/dialects/*.toml
name), by hand and not from those files, so that a test against the sandbox checks the
worker's mapping against a second reading of the documentation. Each dialect is its routes,
its auth scheme, how its create body reads as a sandbox spec, and how a task is shown.

The router and openai dialects are the flavors (app.py, vocabulary.py); these are served by
one catch-all route, behind the same gate (auth, limits, faults) and on the same state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .state import Phase, Task

# Routes every dialect shares: the admin routes and the file (CDN) routes.
SHARED_PREFIXES = ("/_sandbox/", "/files/", "/cdn/")

Render = Callable[[Task, Phase, int, "str | None"], dict[str, Any]]


@dataclass(frozen=True)
class Speech:
    """One provider's API as the sandbox serves it."""

    auth: str  # "bearer" | "key" | "x-goog-api-key" | "kling-jwt"
    create: re.Pattern[str]  # POST; a "model" group where the path names the model
    query: re.Pattern[str]  # GET; an "id" group
    # (create body, the path's model or None) -> a body parse_videos_create reads
    parse: Callable[[dict[str, Any], str | None], dict[str, Any]]
    render: Render  # (task, phase, progress, file URL or None) -> the answer
    created: Callable[[Task], dict[str, Any]]  # the create answer
    id_prefix: str
    cancel: tuple[str, re.Pattern[str]] | None = None  # (method, path with an "id" group)
    # GET route of an extra step to the file (MiniMax's files/retrieve, fal's response_url),
    # with an "id" group or a file_id parameter, and its answer: (task, phase, file URL) ->
    # (HTTP status, body)
    result: re.Pattern[str] | None = None
    result_answer: Callable[[Task, Phase, str], tuple[int, dict[str, Any]]] | None = None
    headers: dict[str, str] = field(default_factory=dict)  # required on every call
    # URLs an answer carries, from the request's "app" group (fal): (root URL, task) -> fields
    links: Callable[[str, Task], dict[str, Any]] | None = None
    # The create body's field with the caller's own task id, unique per account (Kling's
    # external_task_id): a create repeating one is refused, and the task is found by it with a
    # GET of the lookup route and the same-named query parameter.
    external_id: str | None = None
    lookup: re.Pattern[str] | None = None


def _words(waiting: str, running: str, done: str, failed: str) -> dict[Phase, str]:
    return {Phase.QUEUED: waiting, Phase.RUNNING: running,
            Phase.COMPLETED: done, Phase.FAILED: failed}  # fmt: skip


def _reason(task: Task) -> tuple[str, str]:
    return task.failure or ("generation_failed", "Video generation failed.")


def _size(value: Any, sep: str) -> str | None:
    return value.replace(sep, "x") if isinstance(value, str) else None


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


# --- Replicate: https://replicate.com/docs/topics/predictions ---

_REPLICATE = _words("starting", "processing", "succeeded", "failed")


def _replicate(task: Task, phase: Phase, _progress: int, url: str | None) -> dict[str, Any]:
    done, failed = phase is Phase.COMPLETED, phase is Phase.FAILED
    return {"id": task.id, "model": task.spec.model, "status": _REPLICATE[phase],
            "output": url if done else None, "error": _reason(task)[1] if failed else None,
            "urls": {"get": f"/v1/predictions/{task.id}",
                     "cancel": f"/v1/predictions/{task.id}/cancel"}}  # fmt: skip


# --- Runway: https://docs.dev.runwayml.com/api ---

_RUNWAY = _words("PENDING", "RUNNING", "SUCCEEDED", "FAILED")


def _runway(task: Task, phase: Phase, progress: int, url: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": task.id, "status": _RUNWAY[phase], "createdAt": "2026-12-01"}
    if phase is Phase.RUNNING:
        out["progress"] = progress / 100  # Runway counts 0..1
    if phase is Phase.COMPLETED:
        out["output"] = [url]
    if phase is Phase.FAILED:
        code, message = _reason(task)
        out.update(failure=message, failureCode=f"INTERNAL.{code.upper()}")
    return out


# --- Kling: the "Text to Video" API reference (Create Task, Query Task) ---

_KLING = _words("submitted", "processing", "succeed", "failed")


def _kling(task: Task, phase: Phase, _progress: int, url: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"task_id": task.id, "task_status": _KLING[phase],
                            "task_status_msg": _reason(task)[1] if phase is Phase.FAILED else "",
                            "created_at": int(task.created_at * 1000)}  # fmt: skip
    if phase is Phase.COMPLETED:
        data["task_result"] = {"videos": [{"id": "v", "url": url,
                                           "duration": str(task.spec.duration_s)}]}  # fmt: skip
    return {"code": 0, "message": "SUCCEED", "request_id": "req", "data": data}


# --- Luma: Dream Machine API v1 (lumaai-python types/generation.py) ---

_LUMA = _words("queued", "dreaming", "completed", "failed")


def _luma(task: Task, phase: Phase, _progress: int, url: str | None) -> dict[str, Any]:
    return {"id": task.id, "generation_type": "video", "state": _LUMA[phase],
            "failure_reason": _reason(task)[1] if phase is Phase.FAILED else None,
            "assets": {"video": url} if phase is Phase.COMPLETED else None}  # fmt: skip


# --- Seedance (Volcengine Ark): content generation tasks ---

_SEEDANCE = _words("queued", "running", "succeeded", "failed")


def _seedance(task: Task, phase: Phase, _progress: int, url: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": task.id, "model": task.spec.model, "status": _SEEDANCE[phase],
                           "error": None, "created_at": int(task.created_at)}  # fmt: skip
    if phase is Phase.COMPLETED:
        out["content"] = {"video_url": url}
        out["usage"] = {"completion_tokens": 1000, "total_tokens": 1000}
    if phase is Phase.FAILED:
        code, message = _reason(task)
        out["error"] = {"code": code, "message": message}
    return out


# --- Wan (DashScope): video-synthesis, /api/v1/tasks ---

_WAN = _words("PENDING", "RUNNING", "SUCCEEDED", "FAILED")


def _wan(task: Task, phase: Phase, _progress: int, url: str | None) -> dict[str, Any]:
    output: dict[str, Any] = {"task_id": task.id, "task_status": _WAN[phase]}
    if phase is Phase.COMPLETED:
        output["video_url"] = url
    if phase is Phase.FAILED:
        output["code"], output["message"] = _reason(task)
    return {"request_id": "req", "output": output,
            "usage": {"video_duration": task.spec.duration_s, "video_count": 1}}  # fmt: skip


# --- OpenRouter: /api/v1/videos ---

_OPENROUTER = _words("pending", "in_progress", "completed", "failed")


def _openrouter(task: Task, phase: Phase, _progress: int, url: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": task.id, "polling_url": f"/api/v1/videos/{task.id}",
                           "status": _OPENROUTER[phase]}  # fmt: skip
    if phase is Phase.COMPLETED:
        out.update(unsigned_urls=[url], usage={"cost": 0.5})
    if phase is Phase.FAILED:
        out["error"] = _reason(task)[1]
    return out


# --- MiniMax: video_generation, query/video_generation, files/retrieve ---

_MINIMAX = _words("Queueing", "Processing", "Success", "Fail")


def _minimax(task: Task, phase: Phase, _progress: int, _url: str | None) -> dict[str, Any]:
    ok = {"status_code": 0, "status_msg": "success"}
    out: dict[str, Any] = {"task_id": task.id, "status": _MINIMAX[phase], "file_id": "",
                           "base_resp": ok}  # fmt: skip
    if phase is Phase.COMPLETED:
        out.update(file_id=f"file-{task.id}", video_width=task.spec.width,
                   video_height=task.spec.height)  # fmt: skip
    if phase is Phase.FAILED:
        out["base_resp"] = {"status_code": 1027, "status_msg": _reason(task)[1]}
    return out


def _minimax_file(task: Task, phase: Phase, url: str) -> tuple[int, dict[str, Any]]:
    """MiniMax's files/retrieve answer for a finished task's file."""
    if phase is not Phase.COMPLETED:
        return 200, {"base_resp": {"status_code": 1004, "status_msg": "file not found"}}
    return 200, {"file": {"file_id": f"file-{task.id}", "filename": "output.mp4",
                          "purpose": "video_generation", "download_url": url},
                 "base_resp": {"status_code": 0, "status_msg": "success"}}  # fmt: skip


# --- fal: queue.fal.run (status_url, response_url, cancel_url) ---

# fal has no failure word: a failed request is COMPLETED, and its response_url tells.
_FAL = _words("IN_QUEUE", "IN_PROGRESS", "COMPLETED", "COMPLETED")


def _fal(task: Task, phase: Phase, _progress: int, _url: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": _FAL[phase]}
    if phase is Phase.QUEUED:
        out["queue_position"] = 0
    if phase in (Phase.COMPLETED, Phase.FAILED):
        out["metrics"] = {"inference_time": task.generation_s}
    return out


def _fal_links(root: str, task: Task) -> dict[str, Any]:
    return {"request_id": task.id, "response_url": root, "status_url": f"{root}/status",
            "cancel_url": f"{root}/cancel"}  # fmt: skip


def _fal_result(task: Task, phase: Phase, url: str) -> tuple[int, dict[str, Any]]:
    if phase is Phase.COMPLETED:
        return 200, {"video": {"url": url, "content_type": "video/mp4", "file_name": "out.mp4"}}
    if phase is Phase.FAILED:
        code, message = _reason(task)
        return 422, {"detail": message, "error_type": code}
    return 400, {"detail": "Request is still in progress"}


# --- Veo (Gemini API): predictLongRunning and operations ---


def _veo(task: Task, phase: Phase, _progress: int, url: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f"models/{task.spec.model}/operations/{task.id}"}
    if phase is Phase.COMPLETED:
        sample = {"video": {"uri": url}}
        out.update(done=True, response={"generateVideoResponse": {"generatedSamples": [sample]}})
    elif phase is Phase.FAILED:
        out.update(done=True, error={"code": 3, "message": _reason(task)[1]})
    elif phase is Phase.RUNNING:
        out["done"] = False  # before it runs, Google sends no "done" at all
    return out


def _body(**fields: Any) -> dict[str, Any]:
    return _drop_none(fields)


SPEECHES: dict[str, Speech] = {
    "replicate": Speech(
        auth="bearer",
        create=re.compile(r"^/v1/models/(?P<model>[^/]+(?:/[^/]+)?)/predictions$"),
        query=re.compile(r"^/v1/predictions/(?P<id>[^/]+)$"),
        cancel=("POST", re.compile(r"^/v1/predictions/(?P<id>[^/]+)/cancel$")),
        parse=lambda b, model: _body(
            model=model,
            **{k: (b.get("input") or {}).get(k) for k in ("prompt", "duration", "aspect_ratio")},
        ),
        render=_replicate,
        created=lambda t: _replicate(t, Phase.QUEUED, 0, None),
        id_prefix="pred_",
    ),
    "runway": Speech(
        auth="bearer",
        headers={"x-runway-version": "2024-11-06"},
        create=re.compile(r"^/v1/text_to_video$"),
        query=re.compile(r"^/v1/tasks/(?P<id>[^/]+)$"),
        cancel=("DELETE", re.compile(r"^/v1/tasks/(?P<id>[^/]+)$")),
        parse=lambda b, _m: _body(
            model=b.get("model"),
            prompt=b.get("promptText"),
            size=_size(b.get("ratio"), ":"),
            duration=b.get("duration"),
        ),
        render=_runway,
        created=lambda t: {"id": t.id},
        id_prefix="rw-",
    ),
    "kling": Speech(
        auth="kling-jwt",
        create=re.compile(r"^/v1/videos/text2video$"),
        query=re.compile(r"^/v1/videos/text2video/(?P<id>[^/]+)$"),
        parse=lambda b, _m: _body(
            model=b.get("model_name"),
            prompt=b.get("prompt"),
            aspect_ratio=b.get("aspect_ratio"),
            duration=int(b["duration"]) if b.get("duration") else None,
        ),
        render=_kling,
        created=lambda t: _kling(t, Phase.QUEUED, 0, None),
        id_prefix="8672",
        external_id="external_task_id",
        lookup=re.compile(r"^/v1/videos/text2video$"),  # ?external_task_id=
    ),
    "luma": Speech(
        auth="bearer",
        create=re.compile(r"^/dream-machine/v1/generations$"),
        query=re.compile(r"^/dream-machine/v1/generations/(?P<id>[^/]+)$"),
        parse=lambda b, _m: _body(
            model=b.get("model"),
            prompt=b.get("prompt"),
            aspect_ratio=b.get("aspect_ratio"),
            duration=int(str(b["duration"]).removesuffix("s")) if b.get("duration") else None,
        ),  # fmt: skip
        render=_luma,
        created=lambda t: _luma(t, Phase.QUEUED, 0, None),
        id_prefix="luma-",
    ),
    "seedance": Speech(
        auth="bearer",
        create=re.compile(r"^/api/v3/contents/generations/tasks$"),
        query=re.compile(r"^/api/v3/contents/generations/tasks/(?P<id>[^/]+)$"),
        cancel=("DELETE", re.compile(r"^/api/v3/contents/generations/tasks/(?P<id>[^/]+)$")),
        parse=lambda b, _m: _body(
            model=b.get("model"),
            aspect_ratio=b.get("ratio"),
            duration=b.get("duration"),
            prompt=next(
                (
                    c.get("text")
                    for c in b.get("content") or []
                    if isinstance(c, dict) and c.get("type") == "text"
                ),
                None,
            ),
        ),  # fmt: skip
        render=_seedance,
        created=lambda t: {"id": t.id},
        id_prefix="cgt-",
    ),
    "wan": Speech(
        auth="bearer",
        create=re.compile(r"^/api/v1/services/aigc/video-generation/video-synthesis$"),
        query=re.compile(r"^/api/v1/tasks/(?P<id>[^/]+)$"),
        cancel=("POST", re.compile(r"^/api/v1/tasks/(?P<id>[^/]+)/cancel$")),
        parse=lambda b, _m: _body(
            model=b.get("model"),
            prompt=(b.get("input") or {}).get("prompt"),
            size=_size((b.get("parameters") or {}).get("size"), "*"),
            duration=(b.get("parameters") or {}).get("duration"),
        ),  # fmt: skip
        render=_wan,
        created=lambda t: {
            "output": {"task_status": "PENDING", "task_id": t.id},
            "request_id": "req",
        },  # fmt: skip
        id_prefix="wan-",
    ),
    "openrouter": Speech(
        auth="bearer",
        create=re.compile(r"^/api/v1/videos$"),
        query=re.compile(r"^/api/v1/videos/(?P<id>[^/]+)$"),
        parse=lambda b, _m: _body(
            **{k: b.get(k) for k in ("model", "prompt", "size", "aspect_ratio", "duration")}
        ),
        render=_openrouter,
        created=lambda t: _openrouter(t, Phase.QUEUED, 0, None),
        id_prefix="job-",
    ),
    "minimax": Speech(
        auth="bearer",
        create=re.compile(r"^/v1/video_generation$"),
        query=re.compile(r"^/v1/query/video_generation$"),  # ?task_id=
        result=re.compile(r"^/v1/files/retrieve$"),  # ?file_id=
        result_answer=_minimax_file,
        parse=lambda b, _m: _body(
            model=b.get("model"), prompt=b.get("prompt"), duration=b.get("duration")
        ),
        render=_minimax,
        created=lambda t: {
            "task_id": t.id,
            "base_resp": {"status_code": 0, "status_msg": "success"},
        },
        id_prefix="1069",
    ),
    "veo": Speech(
        auth="x-goog-api-key",
        create=re.compile(r"^/v1beta/models/(?P<model>[^/:]+):predictLongRunning$"),
        query=re.compile(r"^/v1beta/models/[^/]+/operations/(?P<id>[^/]+)$"),
        parse=lambda b, model: _body(
            model=model,
            prompt=((b.get("instances") or [{}])[0] or {}).get("prompt"),
            aspect_ratio=(b.get("parameters") or {}).get("aspectRatio"),
            duration=(b.get("parameters") or {}).get("durationSeconds"),
        ),  # fmt: skip
        render=_veo,
        created=lambda t: {"name": f"models/{t.spec.model}/operations/{t.id}"},
        id_prefix="op",
    ),
    "fal": Speech(
        auth="key",
        create=re.compile(r"^/(?P<model>(?P<app>[^/]+/[^/]+)(?:/[^/]+)*)$"),
        query=re.compile(r"^/(?P<app>[^/]+/[^/]+)/requests/(?P<id>[^/]+)/status$"),
        result=re.compile(r"^/(?P<app>[^/]+/[^/]+)/requests/(?P<id>[^/]+)$"),
        result_answer=_fal_result,
        cancel=("PUT", re.compile(r"^/[^/]+/[^/]+/requests/(?P<id>[^/]+)/cancel$")),
        # The sandbox's model is the endpoint id's last segment ("fal-ai/sora" -> "sora").
        parse=lambda b, model: _body(
            model=(model or "").rsplit("/", 1)[-1] or None,
            prompt=b.get("prompt"),
            aspect_ratio=b.get("aspect_ratio"),
            duration=int(b["duration"]) if b.get("duration") else None,
        ),
        render=_fal,
        created=lambda t: {},
        links=_fal_links,
        id_prefix="fal-",
    ),
}


def refused_external_id(field: str, value: str) -> dict[str, Any]:
    """Kling's answer (HTTP 400) to a create repeating an external task id: a parameter error
    (service code 1201) that names the field."""
    return {"code": 1201, "message": f"{field} {value!r} already exists", "request_id": "req"}


def kling_key(token: str, keys: frozenset[str], now: float) -> str | None:
    """The configured "ACCESS:SECRET" key whose secret signed this JWT (HS256) for its access
    key (iss), if it is in its time window (nbf..exp); else None."""
    try:
        head, claims_part, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(claims_part + "=" * (-len(claims_part) % 4)))
        sent = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (ValueError, TypeError):
        return None
    if not isinstance(claims, dict):
        return None
    for key in keys:
        access, _, secret = key.partition(":")
        if claims.get("iss") != access or not secret:
            continue
        mac = hmac.new(secret.encode(), f"{head}.{claims_part}".encode(), hashlib.sha256)
        in_time = isinstance(claims.get("exp"), int) and claims.get("nbf", 0) <= now < claims["exp"]
        if hmac.compare_digest(mac.digest(), sent) and in_time:
            return key
    return None


def route_class(speech: Speech, method: str, path: str) -> str | None:
    """The gate's class of a request in this dialect: create, status, or None."""
    if path.startswith(SHARED_PREFIXES):
        return None
    if method == "POST" and speech.create.match(path):
        return "create"
    if method == "GET" and (
        speech.query.match(path)
        or (speech.result and speech.result.match(path))
        or (speech.lookup and speech.lookup.match(path))
    ):
        return "status"
    if speech.cancel and method == speech.cancel[0] and speech.cancel[1].match(path):
        return "status"
    return None
