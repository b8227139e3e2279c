"""How each flavor and vocabulary describes a task: status words and response shapes.

- router flavor (upstream-api.txt): ``processing`` then ``completed`` with
  ``video: {url, duration, width, height}``; the unified query answers a top-level ``video_url``.
- openai flavor: OpenAI's Video object (``queued -> in_progress -> completed | failed``, progress,
  no URL: the bytes come from ``/v1/videos/{id}/content``).
- vocabulary ``alt`` (``queued/running/succeeded/failed``, plus a top-level ``video_url``) and
  ``upper`` (``IN_QUEUE/IN_PROGRESS/COMPLETED/FAILED``) mimic other routers, to exercise a
  client's status mapping; ``novel`` (``warming_up/rendering_frames``, then ``completed``)
  uses words nobody documents, to exercise how a client treats the unknown.
- knobs ``numeric_error_code`` (``error.code`` as a number) and ``url_as_list`` (every URL field
  as a list of one string) reshape the answer in either flavor.
"""

from __future__ import annotations

from typing import Any

from .config import Flavor, Vocabulary
from .state import Phase, Task

_WORDS: dict[str, dict[Phase, str]] = {
    "router": {
        Phase.QUEUED: "processing",
        Phase.RUNNING: "processing",
        Phase.COMPLETED: "completed",
        Phase.FAILED: "failed",
    },
    "openai": {p: p.value for p in Phase},
    "alt": {
        Phase.QUEUED: "queued",
        Phase.RUNNING: "running",
        Phase.COMPLETED: "succeeded",
        Phase.FAILED: "failed",
    },
    # Words no documented vocabulary has, while the task runs: a client should keep polling.
    "novel": {
        Phase.QUEUED: "warming_up",
        Phase.RUNNING: "rendering_frames",
        Phase.COMPLETED: "completed",
        Phase.FAILED: "failed",
    },
    "upper": {
        Phase.QUEUED: "IN_QUEUE",
        Phase.RUNNING: "IN_PROGRESS",
        Phase.COMPLETED: "COMPLETED",
        Phase.FAILED: "FAILED",
    },
}

# OpenAI: downloadable assets expire (at most) an hour after generation.
ASSET_LIFETIME_S = 3600

# numeric_error_code: what some routers send instead of a word (4xxxx: the request's fault).
NUMERIC_ERROR_CODES = {
    "content_policy_violation": 40001,
    "generation_failed": 50001,
    "internal_error": 50002,
}


def status_word(phase: Phase, flavor: Flavor, vocabulary: Vocabulary) -> str:
    """The word this flavor and vocabulary use for phase."""
    table = _WORDS[flavor] if vocabulary == "standard" else _WORDS[vocabulary]
    return table[phase]


def render_task(
    task: Task,
    now: float,
    *,
    flavor: Flavor,
    vocabulary: Vocabulary,
    file_url: str | None,
    unified: bool = False,
    numeric_error_code: bool = False,
    url_as_list: bool = False,
) -> dict[str, Any]:
    """The task as GET /v1/videos/{id} (or the unified query) answers it.

    Args:
        task: the task.
        now: the time to compute its phase at.
        flavor: router or openai shape.
        vocabulary: which status words.
        file_url: a fresh signed URL of the file (used only once completed).
        unified: the unified format's answer (top-level ``video_url``), router flavor only.
        numeric_error_code: a failed task's ``error.code`` as a number.
        url_as_list: every URL field as a list of one string.
    """
    url: str | list[str | None] | None = [file_url] if url_as_list else file_url
    if flavor == "openai":
        return _openai_video(task, now, vocabulary, url, numeric_error_code)
    phase = task.phase(now)
    spec = task.spec
    out: dict[str, Any] = {
        "id": task.id,
        "object": "video",
        "status": status_word(phase, flavor, vocabulary),
        "created_at": int(task.created_at),
        "model": spec.model,
        "progress": task.progress(now),
    }
    if phase is Phase.COMPLETED:
        out["completed_at"] = int(task.created_at + task.generation_s)
        if unified:
            out.update(video_url=url, duration=spec.duration_s)
            out.update(width=spec.width, height=spec.height)
        else:
            out["video"] = {
                "url": url,
                "duration": spec.duration_s,
                "width": spec.width,
                "height": spec.height,
            }
            if vocabulary == "alt":
                out["video_url"] = url
    elif phase is Phase.FAILED:
        out["error"] = _error(task, numeric_error_code)
    return out


def _openai_video(
    task: Task,
    now: float,
    vocabulary: Vocabulary,
    url: str | list[str | None] | None,
    numeric_error_code: bool,
) -> dict[str, Any]:
    phase = task.phase(now)
    spec = task.spec
    ended = int(task.created_at + task.generation_s) if phase in (Phase.COMPLETED,) else None
    out: dict[str, Any] = {
        "id": task.id,
        "object": "video",
        "status": status_word(phase, "openai", vocabulary),
        "progress": task.progress(now),
        "model": spec.model,
        "seconds": str(spec.duration_s),
        "size": spec.size,
        "prompt": spec.prompt
        if spec.storyboard is None
        else " / ".join(s.prompt for s in spec.storyboard),
        "created_at": int(task.created_at),
        "completed_at": ended,
        "expires_at": None if ended is None else ended + ASSET_LIFETIME_S,
        "error": _error(task, numeric_error_code) if phase is Phase.FAILED else None,
        "remixed_from_video_id": None,
    }
    if vocabulary == "alt" and phase is Phase.COMPLETED:
        out["video_url"] = url
    return out


def _error(task: Task, numeric_code: bool) -> dict[str, str | int]:
    code, message = task.failure or ("generation_failed", "Video generation failed.")
    return {"code": NUMERIC_ERROR_CODES[code] if numeric_code else code, "message": message}
