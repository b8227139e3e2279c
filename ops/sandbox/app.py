"""The sandbox's routes: the provider API, the file (CDN) routes and the admin routes.

Auth, the per-minute limit and transport faults have already been applied by gate.Gate by the
time a handler runs; handlers parse, validate, consult the state and render.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from producer.http.bodies import Upload, is_form, read_form, read_json

from .callbacks import callback_url_of
from .errors import ApiError, invalid, not_found
from .files import Mp4Body, parse_range, send_file
from .gate import KEY_SCOPE, RAW_SCOPE, Gate
from .media import break_moov, garble_frames
from .oddities import status_response
from .speech import SHARED_PREFIXES, SPEECHES, Speech, refused_external_id
from .state import TERMINAL, Phase, Task
from .validation import (
    OPENAI_MODELS,
    ReferenceFile,
    parse_character,
    parse_unified_create,
    parse_videos_create,
)
from .vocabulary import render_task

if TYPE_CHECKING:
    from .service import Sandbox

Handler = Callable[[Request], Awaitable[Response]]
# Replicate's account webhook secret (GET, with the API key).
REPLICATE_SECRET = "/v1/webhooks/default/secret"


def build_app(sandbox: Sandbox) -> Gate:
    """The ASGI app: the routes behind the gate."""
    h = _Handlers(sandbox)
    hidden = h.undocumented
    routes = [
        Route("/v1/videos", h.create_video, methods=["POST"]),
        Route("/v1/video/create", h.create_unified, methods=["POST"]),
        Route("/v1/video/query", hidden(h.query_unified), methods=["GET"]),
        Route("/v1/videos/characters", hidden(h.create_character_openai), methods=["POST"]),
        Route("/v1/videos/{task_id}", h.get_video, methods=["GET"]),
        Route("/v1/videos/{task_id}", hidden(h.delete_video, 405), methods=["DELETE"]),
        Route("/v1/videos/{task_id}/content", hidden(h.video_content), methods=["GET"]),
        Route("/sora/v1/characters", h.create_character, methods=["POST"]),
        Route("/sora/v1/characters/{char_id}", hidden(h.get_character), methods=["GET"]),
        Route("/files/{name}", h.file, methods=["GET"]),
        Route("/cdn/{name}", h.cdn_file, methods=["GET"]),
        Route("/_sandbox/health", h.health, methods=["GET"]),
        Route("/_sandbox/stats", h.admin_stats, methods=["GET"]),
        Route("/_sandbox/config", h.admin_config, methods=["GET", "POST"]),
        Route("/_sandbox/reset", h.admin_reset, methods=["POST"]),
        Route("/_sandbox/jwks.json", h.jwks, methods=["GET"]),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    # Every other provider's API (speech.py), when the sandbox speaks it; the file and admin
    # routes stay the same in every dialect.
    speaking = Starlette(
        routes=[Route("/{path:path}", h.speak, methods=["GET", "POST", "PUT", "DELETE"])],
        exception_handlers=handlers,
    )

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        shared = scope.get("path", "").startswith(SHARED_PREFIXES)
        speaks = sandbox.config.dialect in SPEECHES and not shared
        await (speaking if speaks else app)(scope, receive, send)

    return Gate(dispatch, sandbox)


def _carries_key(request: Request, keys: frozenset[str]) -> bool:
    """Whether a request carries an API key in any header or query parameter, in whatever
    scheme (Authorization, x-goog-api-key, ?key=): what another origin must never see."""
    values = [*request.headers.values(), *(v for _, v in request.query_params.multi_items())]
    return "authorization" in request.headers or any(k in v for v in values for k in keys)


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # Starlette's own 404/405 are plain text; a client expects the provider's JSON everywhere.
    codes = {404: "not_found", 405: "method_not_allowed"}
    return ApiError(
        exc.status_code,
        str(exc.detail),
        code=codes.get(exc.status_code, "http_error"),
        headers=dict(exc.headers or {}),
    ).response()


class _Handlers:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sb = sandbox

    def undocumented(self, handler: Handler, status: int = 404) -> Handler:
        """handler, answering as if the route did not exist while routes="documented"."""

        async def maybe(request: Request) -> Response:
            if self.sb.config.routes == "documented":
                if status == 405:
                    raise ApiError(405, "Method Not Allowed", code="method_not_allowed")
                raise not_found("Not Found")
            return await handler(request)

        return maybe

    # --- video API ---

    async def create_video(self, request: Request) -> Response:
        body = await self._create_body(request)
        return await self._create(request, "videos", body)

    async def create_unified(self, request: Request) -> Response:
        body = await self._create_body(request)
        return await self._create(request, "unified", body)

    async def _create(self, request: Request, kind: str, body: dict[str, Any]) -> Response:
        sb, cfg, key = self.sb, self.sb.config, request.scope[KEY_SCOPE]
        idem = request.headers.get("idempotency-key")
        models = set(cfg.timings)
        default_model = "sora-2" if cfg.flavor == "openai" else "sora"
        parse = parse_videos_create if kind == "videos" else parse_unified_create
        spec = parse(body, models=models, default_model=default_model)
        prefix = "video_" if cfg.flavor == "openai" else "sora_task_"
        task, replayed = sb.state.create_task(
            key=key,
            kind=kind,
            spec=spec,
            idempotency_key=idem,
            config=cfg,
            now=sb.clock(),
            task_id=sb.state.new_id(prefix),
        )
        if not replayed:
            sb.media.prefetch((spec.width, spec.height, spec.duration_s, cfg.fps))
            if sb.state.roll("lost_create", cfg.lost_create_rate):
                # The task exists and will be billed; only the answer is lost.
                sb.state.count_in("faults", "lost_create")
                raise ApiError(502, "bad gateway", code="bad_gateway", type_="server_error")
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        # A fresh create answers as of its own creation (queued), as providers do, however
        # long this request took to serve; a replay answers as of now.
        at = None if replayed else task.created_at
        return JSONResponse(self._render(request, task, at=at), headers=headers)

    async def get_video(self, request: Request) -> Response:
        try:
            task = self.sb.state.get_task(request.scope[KEY_SCOPE], request.path_params["task_id"])
        except ApiError:
            if self.sb.config.routes != "documented":
                raise
            # new-api, the seed router's family: a task that is missing (or another user's)
            # is a 400 with its task error shape, not a 404.
            body = {"code": "task_not_exist", "message": "task_not_exist", "data": None}
            return JSONResponse(body, status_code=400)
        self.sb.state.note_status_query(task)
        return status_response(self.sb, self._render(request, task), self._poll_headers(task))

    async def query_unified(self, request: Request) -> Response:
        task_id = request.query_params.get("id")
        if not task_id:
            raise invalid("the id query parameter is required", code="missing_id", param="id")
        try:
            task = self.sb.state.get_task(request.scope[KEY_SCOPE], task_id)
        except ApiError as err:
            # This router's unified format also says so at top level.
            err.extra = {"code": "task_not_exist", "message": err.message}
            raise
        self.sb.state.note_status_query(task)
        body = self._render(request, task, unified=True)
        return status_response(self.sb, body, self._poll_headers(task))

    async def delete_video(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        self.sb.state.delete_task(request.scope[KEY_SCOPE], task_id, self.sb.clock())
        return JSONResponse({"id": task_id, "object": "video.deleted", "deleted": True})

    async def video_content(self, request: Request) -> Response:
        sb = self.sb
        task = sb.state.get_task(request.scope[KEY_SCOPE], request.path_params["task_id"])
        variant = request.query_params.get("variant", "video")
        if variant != "video":
            raise invalid(
                f"variant {variant!r} is not available in the sandbox; use video",
                code="invalid_variant",
                param="variant",
            )
        if task.phase(sb.clock()) is not Phase.COMPLETED:
            raise invalid(
                f"video {task.id} is not completed; poll it until status is completed",
                code="video_not_ready",
            )
        return await self._serve_file(request, task, via_api=True)

    # --- the other dialects (speech.py) ---

    async def speak(self, request: Request) -> Response:
        sb, cfg = self.sb, self.sb.config
        speech = SPEECHES[cfg.dialect]
        # Unclassified paths reach here without a key, and match none of the routes below.
        path, method, key = request.url.path, request.method, request.scope.get(KEY_SCOPE, "")
        now = sb.clock()
        if speech.cancel and method == speech.cancel[0] and (m := speech.cancel[1].match(path)):
            task = sb.state.delete_task(key, m["id"], now)
            return JSONResponse(speech.render(task, Phase.FAILED, 0, None))
        if method == "GET" and (match := speech.query.match(path)):
            task_id = match.groupdict().get("id") or request.query_params.get("task_id", "")
            task = sb.state.get_task(key, task_id)
            sb.state.note_status_query(task)
            phase = task.phase(now)
            url = self._file_url(request, task, now) if phase is Phase.COMPLETED else None
            body = speech.render(task, phase, task.progress(now), url)
            return JSONResponse({**body, **self._links(request, speech, match, task)})
        if method == "GET" and cfg.dialect == "replicate" and path == REPLICATE_SECRET:
            # Replicate's account webhook secret, for the key's holder only.
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
            if bearer not in cfg.api_keys:
                raise ApiError(401, "Unauthenticated", code="unauthenticated")
            return JSONResponse({"key": cfg.webhook_secret})
        if method == "GET" and speech.lookup and (match := speech.lookup.match(path)):
            assert speech.external_id is not None
            found = sb.state.task_by_external_id(
                key, request.query_params.get(speech.external_id, "")
            )
            if found is None:
                raise not_found("no task with that id", code="task_not_exist")
            sb.state.note_status_query(found)
            phase = found.phase(now)
            url = self._file_url(request, found, now) if phase is Phase.COMPLETED else None
            return JSONResponse(speech.render(found, phase, found.progress(now), url))
        if method == "GET" and speech.result and (match := speech.result.match(path)):
            assert speech.result_answer is not None
            file_id = request.query_params.get("file_id", "").removeprefix("file-")
            task = sb.state.get_task(key, match.groupdict().get("id") or file_id)
            status, body = speech.result_answer(
                task, task.phase(now), self._file_url(request, task, now)
            )
            return JSONResponse(body, status_code=status)
        if method == "POST" and (match := speech.create.match(path)):
            body = await self._json_body(request)
            spec_body = speech.parse(body, match.groupdict().get("model"))
            spec = parse_videos_create(spec_body, models=set(cfg.timings), default_model="sora")
            field = speech.external_id
            external_id = body.get(field) if field else None
            if not (isinstance(external_id, str) and external_id):
                external_id = None
            elif field and sb.state.task_by_external_id(key, external_id) is not None:
                return JSONResponse(refused_external_id(field, external_id), status_code=400)
            task, _ = sb.state.create_task(
                key=key,
                kind=cfg.dialect,
                spec=spec,
                idempotency_key=request.headers.get("idempotency-key"),
                config=cfg,
                now=now,
                task_id=sb.state.new_id(speech.id_prefix),
            )
            if external_id is not None:
                sb.state.note_external_id(key, external_id, task)
            sb.media.prefetch((spec.width, spec.height, spec.duration_s, cfg.fps))
            callback = callback_url_of(cfg.dialect, body, dict(request.query_params))
            if callback is not None and not await sb.callbacks.created(task, callback):
                raise invalid("callback_url did not echo the challenge", code="callback_failed")
            if sb.state.roll("lost_create", cfg.lost_create_rate):
                sb.state.count_in("faults", "lost_create")  # the task exists; its answer is lost
                raise ApiError(502, "bad gateway", code="bad_gateway", type_="server_error")
            return JSONResponse(
                {**speech.created(task), **self._links(request, speech, match, task)}
            )
        raise not_found("Not Found")

    def _links(
        self, request: Request, speech: Speech, match: re.Match[str], task: Task
    ) -> dict[str, Any]:
        """The URLs an answer carries about its task (fal), under the request's app."""
        if speech.links is None:
            return {}
        base = self.sb.config.public_base_url or str(request.base_url).rstrip("/")
        return speech.links(f"{base}/{match['app']}/requests/{task.id}", task)

    def _file_url(self, request: Request, task: Task, now: float, shown: bool = True) -> str:
        """A fresh signed URL of task's file; counted when shown in an answer that says the
        task completed."""
        cfg = self.sb.config
        base = cfg.public_base_url or str(request.base_url).rstrip("/")
        if shown and task.phase(now) is Phase.COMPLETED:
            self.sb.state.note_file_url(task)
        query = self.sb.signer.query(task.id, cfg.url_ttl_s, now, opaque=cfg.opaque_urls)
        return f"{base}/files/{task.id}.mp4?{query}"

    # --- characters ---

    async def create_character(self, request: Request) -> Response:
        body = await self._json_body(request)
        name, description, images = parse_character(body)
        char = self.sb.state.create_character(
            request.scope[KEY_SCOPE], name, description, images, self.sb.clock()
        )
        return JSONResponse(_character_json(char))

    async def create_character_openai(self, request: Request) -> Response:
        body = await self._create_body(request)
        name, _, _ = parse_character({"name": body.get("name")})
        if body.get("video") is None:
            raise invalid("video (a file) is required", code="missing_video", param="video")
        char = self.sb.state.create_character(
            request.scope[KEY_SCOPE], name, "", [], self.sb.clock()
        )
        return JSONResponse(_character_json(char))

    async def get_character(self, request: Request) -> Response:
        char = self.sb.state.get_character(request.scope[KEY_SCOPE], request.path_params["char_id"])
        return JSONResponse(_character_json(char))

    # --- files ---

    async def file(self, request: Request) -> Response:
        """The URL in ``video.url``: served here, or redirected to the CDN origin."""
        task = self._signed_task(request)
        cdn = self.sb.config.cdn_base_url
        if cdn is not None:
            self.sb.state.count("redirects")
            url = f"{cdn}/cdn/{request.path_params['name']}?{request.url.query}"
            return RedirectResponse(url, status_code=302)
        return await self._serve_file(request, task)

    async def cdn_file(self, request: Request) -> Response:
        """The CDN origin's copy of a file."""
        task = self._signed_task(request)
        if _carries_key(request, self.sb.config.api_keys):
            self.sb.state.count("cdn_downloads_with_key")
        return await self._serve_file(request, task)

    def _signed_task(self, request: Request) -> Task:
        name = request.path_params["name"]
        if not name.endswith(".mp4"):
            raise not_found(f"no such file {name!r}")
        task_id = name.removesuffix(".mp4")
        refused = self.sb.signer.check_query(task_id, request.query_params, self.sb.clock())
        if refused is not None:
            code = "url_expired" if refused == "link expired" else "invalid_signature"
            if code == "url_expired":
                self.sb.state.note_expired_download(task_id)
            raise ApiError(403, f"{refused}: fetch the task again for a fresh URL", code=code)
        task = self.sb.state.task_for_file(task_id)
        if task is None or task.phase(self.sb.clock()) is not Phase.COMPLETED:
            raise not_found(f"no such file {name!r}")
        return task

    async def _serve_file(self, request: Request, task: Task, via_api: bool = False) -> Response:
        sb, cfg = self.sb, self.sb.config
        clip = await sb.media.get(
            (task.spec.width, task.spec.height, task.spec.duration_s, cfg.fps)
        )
        # Decided per download, not per task: a client that retries may get a good copy.
        if request.method != "HEAD" and sb.state.roll("broken_moov", cfg.broken_moov_rate):
            sb.state.count_in("faults", "broken_moov")
            clip = break_moov(clip)
        elif request.method != "HEAD" and sb.state.roll("garbled_frames", cfg.garbled_frames_rate):
            sb.state.count_in("faults", "garbled_frames")
            clip = garble_frames(clip)
        body = Mp4Body(clip=clip, task_id=task.id, padding=cfg.file_padding_bytes)
        # The content route wants the key; on a file URL a bearer token is a leak.
        leaked = not via_api and "authorization" in request.headers
        sb.state.note_download(task, with_auth=leaked)
        return _FileResponse(body, request.headers.get("range"), sb)

    # --- admin ---

    async def jwks(self, _request: Request) -> Response:
        """The key set fal-style callbacks are signed with (fal publishes its own)."""
        return JSONResponse(self.sb.callbacks.jwks())

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"ok": True, "flavor": self.sb.config.flavor})

    async def admin_stats(self, request: Request) -> Response:
        self._admin_enabled()
        include = request.query_params.get("tasks", "1") not in ("0", "false", "no")
        return JSONResponse(self.sb.stats(include_tasks=include))

    async def admin_config(self, request: Request) -> Response:
        self._admin_enabled()
        if request.method == "POST":
            patch = await self._json_body(request)
            try:
                self.sb.configure(**patch)
            except ValueError as exc:
                # pydantic's ValidationError is a ValueError; its text names every bad field.
                raise invalid(str(exc), code="invalid_config") from exc
        return JSONResponse({"config": self.sb.config.model_dump(mode="json")})

    async def admin_reset(self, request: Request) -> Response:
        self._admin_enabled()
        raw = await request.body()
        patch = await self._json_body(request) if raw.strip() else {}
        self.sb.reset_stats(drop_tasks=bool(patch.get("tasks", False)))
        return JSONResponse({"ok": True})

    def _admin_enabled(self) -> None:
        if not self.sb.config.admin:
            raise not_found("the admin routes are disabled (admin=false)")

    # --- helpers ---

    def _render(
        self, request: Request, task: Task, *, unified: bool = False, at: float | None = None
    ) -> dict[str, Any]:
        cfg, now = self.sb.config, self.sb.clock()
        now = now if at is None else at
        # The openai flavor's answer carries no URL (its bytes come from /content) but in the
        # alt vocabulary.
        shown = cfg.flavor != "openai" or cfg.vocabulary == "alt"
        body = render_task(
            task,
            now,
            flavor=cfg.flavor,
            vocabulary=cfg.vocabulary,
            file_url=self._file_url(request, task, now, shown),
            unified=unified,
            numeric_error_code=cfg.numeric_error_code,
            url_as_list=cfg.url_as_list,
        )
        if cfg.report_cost:
            body["usage"] = {**(body.get("usage") or {}), "cost": task.charged_usd}
        return body

    def _poll_headers(self, task: Task) -> dict[str, str]:
        cfg, now = self.sb.config, self.sb.clock()
        if cfg.flavor != "openai" or task.phase(now) in TERMINAL:
            return {}
        if cfg.poll_after_ms is not None:
            ms = cfg.poll_after_ms
        elif task.ends_at is None:
            ms = 5000
        else:
            ms = int(min(5000, max(20, (task.ends_at - now) * 1000)))
        return {"openai-poll-after-ms": str(ms)}

    async def _create_body(self, request: Request) -> dict[str, Any]:
        if is_form(request):
            return await self._form_body(request)
        return await self._json_body(request)

    async def _json_body(self, request: Request) -> dict[str, Any]:
        return await read_json(request, self.sb.config.max_json_bytes)

    async def _form_body(self, request: Request) -> dict[str, Any]:
        body = await read_form(request, self.sb.config.max_upload_bytes, max_fields=100)
        for name, value in body.items():
            if isinstance(value, Upload):
                # What a file is and its digest are kept (validation.py checks an image as
                # OpenAI does; the stats show what came), never its bytes.
                body[name] = ReferenceFile.of(value.filename, value.content_type, value.data)
        if isinstance(body.get("characters"), str):
            body["characters"] = [body["characters"]]
        return body


class _FileResponse(Response):
    """A (possibly ranged, possibly truncated) MP4 streamed from an Mp4Body."""

    def __init__(self, body: Mp4Body, range_header: str | None, sandbox: Sandbox) -> None:
        super().__init__()
        self._mp4 = body
        self._range = range_header
        self._sb = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = self._mp4.size
        headers = [
            (b"content-type", b"video/mp4"),
            (b"accept-ranges", b"bytes"),
            (b"cache-control", b"private, max-age=3600"),
        ]
        wanted = parse_range(self._range, size)
        if wanted == "unsatisfiable":
            await ApiError(
                416,
                f"range not satisfiable (size {size})",
                code="range_not_satisfiable",
                headers={"Content-Range": f"bytes */{size}"},
            ).response()(scope, receive, send)
            return
        status, start, stop = 200, 0, size
        if isinstance(wanted, tuple):
            status, (start, stop) = 206, wanted
            headers.append((b"content-range", f"bytes {start}-{stop - 1}/{size}".encode()))
        if scope["method"] == "HEAD":
            headers.append((b"content-length", str(stop - start).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        state, cfg = self._sb.state, self._sb.config
        truncate = state.roll("truncate", cfg.truncate_rate)
        short = state.roll("short_content_length", cfg.short_content_length_rate)
        # A body cut short already breaks its Content-Length; one lie per download is enough.
        # Without a transport to write to (not uvicorn), the lie can't be told at all.
        short = short and not truncate and bool(scope.get(RAW_SCOPE))
        if truncate:
            state.count_in("faults", "truncate")
        if short:
            state.count_in("faults", "short_content_length")
        await send_file(
            self._mp4,
            start,
            stop,
            status=status,
            headers=headers,
            truncate=truncate,
            receive=receive,
            send=send,
            short_length=short,
            stream_s=cfg.file_stream_s,
            chunk_bytes=cfg.file_chunk_bytes,
            unsized=cfg.file_unsized,
        )


def _character_json(char: Any) -> dict[str, Any]:
    return {
        "id": char.id,
        "object": "character",
        "name": char.name,
        "description": char.description,
        "reference_images": char.reference_images,
        "created_at": int(char.created_at),
    }


__all__ = ["OPENAI_MODELS", "build_app"]
