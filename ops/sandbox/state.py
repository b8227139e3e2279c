"""What the sandbox remembers: tasks, characters, idempotency keys, limits and counters.

A task's status is never stored: it is computed from its creation time, its generation time and
its fate whenever someone asks, so 10,000 tasks cost a dict entry each and no timers.
All state sits behind one lock because tests read stats from another thread than the server's.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .config import SandboxConfig
from .errors import ApiError, invalid, not_found
from .validation import VideoSpec

# The windows rpm_limit and rps_limit count requests over.
RPM_WINDOW_S = 60.0
RPS_WINDOW_S = 1.0
# When every slot is held by a stuck task nothing will free one soon; tell the client so.
STUCK_RETRY_AFTER_S = 30


def key_fingerprint(api_key: str) -> str:
    """How stats name an API key: never the key itself, which the stats route would leak."""
    return "key_" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


class Phase(StrEnum):
    """Where a task is in its life, in OpenAI's words (vocabulary.py translates them)."""

    QUEUED = "queued"
    RUNNING = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


TERMINAL = frozenset({Phase.COMPLETED, Phase.FAILED})


class Fate(StrEnum):
    """How a task will end, decided when it is created (fail_rate, stuck_rate)."""

    OK = "ok"
    FAIL = "fail"
    STUCK = "stuck"


FAILURES = (
    ("content_policy_violation", "The request was rejected by the moderation system."),
    ("generation_failed", "Video generation failed on the inference backend; please retry."),
    ("internal_error", "An internal error occurred while rendering the video."),
)


@dataclass(slots=True)
class Task:
    """One generation, with its per-task counters."""

    id: str
    key: str
    kind: str  # "videos" (POST /v1/videos) or "unified" (POST /v1/video/create)
    spec: VideoSpec
    created_at: float
    generation_s: float
    queued_s: float
    fate: Fate
    failure: tuple[str, str] | None = None
    creates: int = 1
    status_queries: int = 0
    # File URLs handed out (in answers that show it completed), and downloads refused because
    # the link they came with had expired.
    file_urls: int = 0
    expired_downloads: int = 0
    downloads: int = 0
    downloads_with_auth: int = 0
    # What the task was billed when it was made (config.usd_per_second x its seconds).
    charged_usd: float = 0.0

    @property
    def ends_at(self) -> float | None:
        """When the task completes or fails; None if it never will."""
        return None if self.fate is Fate.STUCK else self.created_at + self.generation_s

    @property
    def ready_at(self) -> float | None:
        """When the task completes (epoch seconds); None if it fails or is stuck."""
        return self.created_at + self.generation_s if self.fate is Fate.OK else None

    def phase(self, now: float) -> Phase:
        """The task's phase at time now."""
        elapsed = now - self.created_at
        if self.fate is Fate.STUCK or elapsed < self.queued_s:
            return Phase.QUEUED
        if elapsed < self.generation_s:
            return Phase.RUNNING
        return Phase.COMPLETED if self.fate is Fate.OK else Phase.FAILED

    def progress(self, now: float) -> int:
        """0-100, as OpenAI reports it."""
        phase = self.phase(now)
        if phase is Phase.COMPLETED:
            return 100
        if phase is not Phase.RUNNING:
            return 0
        span = max(self.generation_s - self.queued_s, 1e-9)
        return min(99, max(1, int(100 * (now - self.created_at - self.queued_s) / span)))


@dataclass(slots=True)
class Character:
    """A reusable character, visible to the key that created it."""

    id: str
    key: str
    name: str
    description: str
    reference_images: list[str]
    created_at: float


@dataclass(slots=True)
class KeyState:
    """Per-API-key limits and counters."""

    requests: int = 0
    tasks: int = 0
    max_concurrent: int = 0
    # The times of its recent requests, per rate window (RPM_WINDOW_S, RPS_WINDOW_S).
    windows: dict[float, deque[float]] = field(default_factory=dict)
    active: list[Task] = field(default_factory=list)


def _zero_totals() -> dict[str, Any]:
    return {
        "requests": 0,
        "creates": 0,
        "idempotent_replays": 0,
        "tasks": 0,
        "status_queries": 0,
        "file_urls": 0,
        "expired_downloads": 0,
        "downloads": 0,
        "file_downloads_with_auth": 0,
        "cdn_downloads_with_key": 0,
        "redirects": 0,
        "characters": 0,
        "deleted": 0,
        "charged_usd": 0.0,
        "responses_by_code": Counter(),
        "rate_limited": Counter(),
        "faults": Counter(),
        "callbacks": Counter(),
    }


class SandboxState:
    """Tasks, characters and counters, safe to read from any thread."""

    def __init__(self, config: SandboxConfig) -> None:
        self._lock = threading.Lock()
        self.tasks: dict[str, Task] = {}
        self.characters: dict[str, Character] = {}
        self._idempotency: dict[tuple[str, str], str] = {}
        # (key, the caller's own task id) -> task id (Kling's external_task_id).
        self._external: dict[tuple[str, str], str] = {}
        self._keys: dict[str, KeyState] = {}
        # Task id -> what it was billed, kept when the task is deleted (a cancel stays billed).
        self.charges: dict[str, float] = {}
        self._totals = _zero_totals()
        self._rngs: dict[str, random.Random] = {}
        # How far each route class has got through config.fault_sequence.
        self._sequence_pos: Counter[str] = Counter()
        self.reseed(config.seed)

    # --- randomness ---

    def reseed(self, seed: int) -> None:
        """Restart every random stream from seed."""
        with self._lock:
            self._seed = seed
            self._rngs.clear()

    def rng(self, stream: str) -> random.Random:
        """The random stream for one concern.

        One stream per knob, so switching one fault on does not shift the draws of another:
        a run stays reproducible knob by knob.
        """
        rng = self._rngs.get(stream)
        if rng is None:
            rng = self._rngs[stream] = random.Random(f"{self._seed}:{stream}")
        return rng

    def roll(self, stream: str, rate: float) -> bool:
        """True with probability rate, drawn from the named stream (no draw when rate is 0)."""
        if rate <= 0:
            return False
        with self._lock:
            return self.rng(stream).random() < rate

    def choice(self, stream: str, options: list[int]) -> int:
        """One of options, drawn from the named stream."""
        with self._lock:
            return self.rng(stream).choice(options)

    def next_fault(self, route: str, sequence: Sequence[str]) -> str:
        """The fate of the route class's next request in its fault sequence ("pass" past its
        end)."""
        with self._lock:
            at = self._sequence_pos[route]
            self._sequence_pos[route] += 1
        return sequence[at] if at < len(sequence) else "pass"

    def restart_sequences(self) -> None:
        """Start every fault sequence from its beginning."""
        with self._lock:
            self._sequence_pos.clear()

    def new_id(self, prefix: str) -> str:
        """A fresh id, reproducible from the seed."""
        with self._lock:
            return prefix + f"{self.rng('ids').getrandbits(96):024x}"

    # --- counters ---

    def count(self, name: str, n: int = 1) -> None:
        """Add n to a total."""
        with self._lock:
            self._totals[name] += n

    def count_in(self, group: str, name: str) -> None:
        """Add 1 to a total that is broken down (responses_by_code, rate_limited, faults)."""
        with self._lock:
            self._totals[group][name] += 1

    def note_request(self, key: str | None) -> None:
        """Count one API or file request (admin routes are not counted)."""
        with self._lock:
            self._totals["requests"] += 1
            if key is not None:
                self._key(key).requests += 1

    # --- limits ---

    def take_rate_slot(
        self, key: str, limit: int | None, window_s: float, now: float
    ) -> float | None:
        """Record a request against key's limit of requests per window_s seconds.

        Returns:
            None when the request may go ahead, else how long until it may (s).
        """
        if limit is None:
            return None
        with self._lock:
            window = self._key(key).windows.setdefault(window_s, deque())
            while window and window[0] <= now - window_s:
                window.popleft()
            if len(window) >= limit:
                return window[0] + window_s - now
            window.append(now)
            return None

    # --- tasks ---

    def create_task(
        self,
        *,
        key: str,
        kind: str,
        spec: VideoSpec,
        idempotency_key: str | None,
        config: SandboxConfig,
        now: float,
        task_id: str,
    ) -> tuple[Task, bool]:
        """Create a task, or find the one this idempotency key already made.

        Returns:
            (task, replayed): replayed is True when no new task was created.

        Raises:
            ApiError: 400 for an unknown character id; 429 when key is at max_concurrent.
        """
        with self._lock:
            if idempotency_key is not None:
                existing = self._idempotency.get((key, idempotency_key))
                if existing is not None and existing in self.tasks:
                    task = self.tasks[existing]
                    task.creates += 1
                    self._totals["creates"] += 1
                    self._totals["idempotent_replays"] += 1
                    return task, True
            for char_id in spec.characters:
                char = self.characters.get(char_id)
                if char is None or char.key != key:
                    raise invalid(
                        f"unknown character id {char_id!r}",
                        code="unknown_character",
                        param="characters",
                    )
            state = self._key(key)
            active = self._prune_active(state, now)
            if config.max_concurrent is not None and len(active) >= config.max_concurrent:
                self._totals["rate_limited"]["concurrency"] += 1
                ends = [t.ends_at for t in active if t.ends_at is not None]
                retry = max(1, math.ceil(min(ends) - now)) if ends else STUCK_RETRY_AFTER_S
                raise ApiError(
                    429,
                    f"too many concurrent generations for this key "
                    f"(limit {config.max_concurrent}); retry after {retry} s",
                    code="concurrency_limit_exceeded",
                    type_="rate_limit_error",
                    headers={"Retry-After": str(retry)},
                )
            task = self._new_task(task_id, key, kind, spec, config, now)
            task.charged_usd = round(
                config.usd_per_second.get(spec.model, 0.0) * spec.duration_s, 6
            )
            self.charges[task.id] = task.charged_usd
            self._totals["charged_usd"] = round(self._totals["charged_usd"] + task.charged_usd, 6)
            self.tasks[task.id] = task
            active.append(task)
            state.tasks += 1
            state.max_concurrent = max(state.max_concurrent, len(active))
            if idempotency_key is not None:
                self._idempotency[(key, idempotency_key)] = task.id
            self._totals["creates"] += 1
            self._totals["tasks"] += 1
            return task, False

    def _new_task(
        self, task_id: str, key: str, kind: str, spec: VideoSpec, config: SandboxConfig, now: float
    ) -> Task:
        timing = config.timings[spec.model]
        jitter = self.rng("jitter").uniform(-config.jitter, config.jitter)
        generation_s = (
            (timing.base_s + timing.per_video_second_s * spec.duration_s)
            * (1 + jitter)
            * config.effective_time_scale
        )
        # The fate draw happens for every task (not only when a rate is set) so that turning
        # fail_rate on picks the same tasks whatever stuck_rate is.
        draw = self.rng("fate").random()
        fate, failure = Fate.OK, None
        if draw < config.fail_rate:
            fate = Fate.FAIL
            failure = FAILURES[self.rng("failure").randrange(len(FAILURES))]
        elif draw < config.fail_rate + config.stuck_rate:
            fate = Fate.STUCK
        return Task(
            id=task_id,
            key=key,
            kind=kind,
            spec=spec,
            created_at=now,
            generation_s=generation_s,
            queued_s=generation_s * config.queued_fraction,
            fate=fate,
            failure=failure,
        )

    def note_external_id(self, key: str, external_id: str, task: Task) -> None:
        """Remember the caller's own id of a task."""
        with self._lock:
            self._external[(key, external_id)] = task.id

    def task_by_external_id(self, key: str, external_id: str) -> Task | None:
        """The task key created under this id of its own, if any."""
        task = self.tasks.get(self._external.get((key, external_id), ""))
        return task if task is not None and task.key == key else None

    def get_task(self, key: str, task_id: str) -> Task:
        """The task, if key may see it.

        Raises:
            ApiError: 404 when there is no such task for this key.
        """
        task = self.tasks.get(task_id)
        if task is None or task.key != key:
            raise not_found(f"video {task_id!r} not found", code="task_not_exist")
        return task

    def task_for_file(self, task_id: str) -> Task | None:
        """The task behind a (signed) file URL, whoever asks."""
        return self.tasks.get(task_id)

    def delete_task(self, key: str, task_id: str, now: float) -> Task:
        """Forget a task (frees its concurrency slot, as cancelling does upstream)."""
        with self._lock:
            task = self.get_task(key, task_id)
            del self.tasks[task_id]
            state = self._key(key)
            state.active = [t for t in state.active if t.id != task_id]
            self._totals["deleted"] += 1
            return task

    def end_generation(self, task_id: str, now: float) -> None:
        """The task's generation ends at now if it had not yet (its fate stands)."""
        with self._lock:
            task = self.tasks[task_id]
            task.generation_s = min(task.generation_s, max(0.0, now - task.created_at))
            task.queued_s = min(task.queued_s, task.generation_s)

    def note_status_query(self, task: Task) -> None:
        """Count one status query of task."""
        with self._lock:
            task.status_queries += 1
            self._totals["status_queries"] += 1

    def note_file_url(self, task: Task) -> None:
        """Count one file URL of task handed out."""
        with self._lock:
            task.file_urls += 1
            self._totals["file_urls"] += 1

    def note_expired_download(self, task_id: str) -> None:
        """Count one download refused because its link had expired."""
        with self._lock:
            if (task := self.tasks.get(task_id)) is not None:
                task.expired_downloads += 1
            self._totals["expired_downloads"] += 1

    def note_download(self, task: Task, *, with_auth: bool) -> None:
        """Count one download of task's file (and whether it carried a bearer token)."""
        with self._lock:
            task.downloads += 1
            self._totals["downloads"] += 1
            if with_auth:
                task.downloads_with_auth += 1
                self._totals["file_downloads_with_auth"] += 1

    # --- characters ---

    def create_character(
        self, key: str, name: str, description: str, images: list[str], now: float
    ) -> Character:
        """Store a character for key."""
        char = Character(
            id=self.new_id("char_"),
            key=key,
            name=name,
            description=description,
            reference_images=images,
            created_at=now,
        )
        with self._lock:
            self.characters[char.id] = char
            self._totals["characters"] += 1
        return char

    def get_character(self, key: str, char_id: str) -> Character:
        """The character, if key may see it.

        Raises:
            ApiError: 404 when there is no such character for this key.
        """
        char = self.characters.get(char_id)
        if char is None or char.key != key:
            raise not_found(f"character {char_id!r} not found", code="character_not_found")
        return char

    # --- stats ---

    def stats(self, now: float, *, include_tasks: bool = True) -> dict[str, Any]:
        """A JSON-ready snapshot of every counter (the shape is documented in README.md)."""
        with self._lock:
            totals = dict(self._totals)
            for group in ("responses_by_code", "rate_limited", "faults", "callbacks"):
                totals[group] = {str(k): v for k, v in sorted(self._totals[group].items())}
            keys = {
                key_fingerprint(key): {
                    "requests": st.requests,
                    "tasks": st.tasks,
                    "active": len(self._prune_active(st, now)),
                    "max_concurrent": st.max_concurrent,
                }
                for key, st in self._keys.items()
            }
            out: dict[str, Any] = {"seed": self._seed, "totals": totals, "keys": keys,
                                   "charges": dict(self.charges)}  # fmt: skip
            if include_tasks:
                out["tasks"] = {t.id: _task_stats(t, now) for t in self.tasks.values()}
            return out

    def reset_stats(self, *, drop_tasks: bool, now: float) -> None:
        """Zero every counter; with drop_tasks also forget tasks, characters and idempotency."""
        with self._lock:
            self._totals = _zero_totals()
            if drop_tasks:
                self.tasks.clear()
                self.charges.clear()
                self.characters.clear()
                self._idempotency.clear()
                self._external.clear()
                self._keys.clear()
                return
            for task in self.tasks.values():
                task.creates = task.status_queries = task.downloads = 0
                task.file_urls = task.expired_downloads = 0
                task.downloads_with_auth = 0
            for st in self._keys.values():
                st.requests = st.tasks = 0
                st.max_concurrent = len(self._prune_active(st, now))

    # --- helpers (call with the lock held) ---

    def _key(self, key: str) -> KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = KeyState()
        return state

    @staticmethod
    def _prune_active(state: KeyState, now: float) -> list[Task]:
        state.active = [t for t in state.active if t.phase(now) not in TERMINAL]
        return state.active


def _task_stats(task: Task, now: float) -> dict[str, Any]:
    phase = task.phase(now)
    return {
        "status": phase.value,
        "kind": task.kind,
        "model": task.spec.model,
        "width": task.spec.width,
        "height": task.spec.height,
        "duration": task.spec.duration_s,
        "image_url": task.spec.image_url,
        "input_reference_sha256": task.spec.input_reference_sha256,
        "created_at": task.created_at,
        "ready_at": task.ready_at if phase is Phase.COMPLETED else None,
        "creates": task.creates,
        "status_queries": task.status_queries,
        "file_urls": task.file_urls,
        "expired_downloads": task.expired_downloads,
        "downloads": task.downloads,
        "downloads_with_auth": task.downloads_with_auth,
        "charged_usd": task.charged_usd,
    }
