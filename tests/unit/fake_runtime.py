"""A worker runtime without Redis, for the unit tier: the steps' logic against in-memory stand-ins.

Only what the store, the schedule and the limits promise the steps is modelled: an update
applies its change to a fresh copy of the record and writes it unless the change returns False
(its `after` then queues on the same "transaction"); a placement with a token is dropped when
another claim holds the entry, clears the lease and ends a run of faults (lua/place.lua). The
provider is a real ProviderClient over httpx.MockTransport.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import httpx

from producer.core.errors import JobNotFound
from producer.core.ledger import settle
from producer.core.names import Keys, Lane
from producer.core.records import BatchRecord, JobRecord, JobStatus, WebhookDelivery
from producer.core.settings import Settings
from producer.core.store import JobStore
from worker.job import Claim, Job
from worker.retries import Retries
from worker.runtime import Runtime

TOKEN = "claim-1"


class FakePipe:
    """A transaction: what is queued on it runs at once (the store's fake is not concurrent)."""

    def __enter__(self) -> FakePipe:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self) -> list[Any]:
        return []


@dataclass
class Placement:
    member: str
    lane: Lane | None
    delay_s: float
    keep_faults: bool


@dataclass
class FakeSchedule:
    leases: dict[str, str] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    placements: list[Placement] = field(default_factory=list)

    def place(
        self,
        member: str,
        lane: Lane | None,
        delay_s: float = 0.0,
        *,
        token: str = "",
        client: Any = None,
        keep_faults: bool = False,
        seen: str = "",
    ) -> int:
        if token and self.leases.get(member) != token:
            return 0
        self.placements.append(Placement(member, lane, delay_s, keep_faults))
        if lane is None or not keep_faults:
            self.faults.pop(member, None)
        self.leases.pop(member, None)
        return 1

    def count_fault(self, member: str) -> int:
        self.faults[member] = self.faults.get(member, 0) + 1
        return self.faults[member]

    def last(self, member: str) -> Placement:
        return [p for p in self.placements if p.member == member][-1]


class FakeRedis:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def pipeline(self, transaction: bool = True) -> FakePipe:
        return FakePipe()

    def time(self) -> tuple[int, int]:
        return int(self.now_s), int((self.now_s % 1) * 1e6)


class FakeStore:
    def __init__(self, now_s: float) -> None:
        self.records: dict[str, JobRecord] = {}
        self.schedule = FakeSchedule()
        self.redis = FakeRedis(now_s)
        self.keys = Keys("unit")
        self.cancelled_batches: set[str] = set()
        self.file_urls: dict[str, str] = {}
        self.unknown_words: list[str] = []
        self.dead_letters: dict[str, str] = {}  # webhook-id -> owner
        self.batch_usage: dict[str, dict[str, float]] = {}
        self.batches: dict[str, BatchRecord] = {}
        self.event_bodies: dict[str, str] = {}

    def get(self, job_id: str) -> JobRecord:
        if job_id not in self.records:
            raise JobNotFound(job_id)
        return self.records[job_id].model_copy(deep=True)

    def update(self, job_id: str, change: Any, *, after: Any = None) -> JobRecord:
        return self.update_many({job_id: change}, after=after)[job_id]

    def update_many(self, changes: dict[str, Any], *, after: Any = None) -> dict[str, JobRecord]:
        if len(changes) == 1 and next(iter(changes)) not in self.records:
            raise JobNotFound(next(iter(changes)))
        out = {}
        for job_id, change in changes.items():
            if job_id not in self.records:
                continue
            record = self.get(job_id)
            if change(record) is not False:
                # As the real store's transaction: an ended job's money settled, its usage
                # summed into its batch's.
                if record.terminal:
                    settle(record)
                for k, v in JobStore._batch_usage(record).items():
                    total = self.batch_usage.setdefault(record.batch_id or "", {})
                    total[k] = total.get(k, 0.0) + v
                self.records[job_id] = record.model_copy(deep=True)
                if after is not None:
                    after(record, FakePipe())
            out[job_id] = record
        return out

    def batch_cancelled(self, batch_id: str) -> bool:
        return batch_id in self.cancelled_batches

    def stash_file_url(self, job_id: str, url: str, client: Any = None) -> None:
        self.file_urls[job_id] = url

    def file_url(self, job_id: str) -> str | None:
        return self.file_urls.get(job_id)

    def forget_file_url(self, job_id: str) -> None:
        self.file_urls.pop(job_id, None)

    def count_unknown_status(self, word: str) -> None:
        self.unknown_words.append(word)

    def expire_at_ms(self, finished_at: str | None) -> int:
        return 0

    def pin_event_body(self, key: str, body: str, expire_at_ms: int) -> str:
        return self.event_bodies.setdefault(key, body)

    def record_dead_letter(self, event_id: str, detail: dict[str, Any], owner_id: str) -> None:
        self.dead_letters[event_id] = owner_id

    def get_batch(self, batch_id: str, *, with_jobs: bool = True) -> BatchRecord:
        if batch_id not in self.batches:
            raise JobNotFound(batch_id)
        return self.batches[batch_id].model_copy(deep=True)

    def set_batch_fields(self, batch_id: str, fields: dict[str, str]) -> bool:
        if batch_id not in self.batches:
            return False
        if "webhook" in fields:
            hook = WebhookDelivery.model_validate_json(fields["webhook"])
            self.batches[batch_id].webhook = hook
        return True


@dataclass
class FakeLimits:
    routes: dict[str, list[str]] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)  # slots kept for a generation
    released: list[str] = field(default_factory=list)
    slot_keys: list[str] = field(default_factory=list)

    def route(self, job_id: str) -> list[str] | None:
        return self.routes.get(job_id)

    def set_route(self, job_id: str, names: list[str], client: Any = None) -> None:
        self.routes[job_id] = list(names)

    def forget_route(self, job_id: str, client: Any = None) -> None:
        self.routes.pop(job_id, None)

    def hold_for_generation(self, job_id: str, tenant: str, client: Any = None) -> None:
        self.held.add(job_id)

    def release(self, job_id: str, tenant: str, client: Any = None) -> None:
        self.held.discard(job_id)
        self.released.append(job_id)


@dataclass
class FakeHistory:
    recorded: list[float] = field(default_factory=list)

    def usual_s(self, request: dict[str, Any]) -> float | None:
        return None

    def late_s(self, request: dict[str, Any]) -> float | None:
        return None

    def record(self, request: dict[str, Any], seconds: float, client: Any = None) -> None:
        self.recorded.append(seconds)


class InlineExecutor(Executor):
    """The poll's threads, run in order on the caller's: the same results, no scheduling."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], **_: Any) -> Iterator[Any]:
        return iter([fn(*args) for args in zip(*iterables, strict=True)])


# A canned answer, an exception the "network" raises, or a function of the request.
Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Provider:
    """The provider's side of the MockTransport: answers by (method, path), records calls."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[Answer]] = {}
        self.calls: list[httpx.Request] = []

    def on(self, method: str, path: str, *answers: Answer) -> None:
        self.answers.setdefault((method, path), []).extend(answers)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        key = (request.method, request.url.raw_path.decode())
        queue = self.answers.get(key) or self.answers.get((request.method, request.url.path))
        if not queue:
            return httpx.Response(404, json={"error": {"message": "no such route in the test"}})
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [c for c in self.calls if c.method == method and c.url.path == path]


def fake_runtime(provider: Provider, now_s: float = 1_000_000.0, **settings: Any) -> Runtime:
    """A Runtime whose Redis parts are fakes and whose provider answers through provider."""
    settings.setdefault("api_base_url", "http://api.test")
    settings.setdefault("api_key", "sk-unit-secret")
    settings.setdefault("url_allowlist", ["127.0.0.0/8"])
    rt = Runtime(Settings(**settings))
    # cached_property: an instance attribute stands in for each built part.
    rt.store = FakeStore(now_s)  # type: ignore[assignment]
    rt.limits = FakeLimits()  # type: ignore[assignment]
    rt.history = FakeHistory()  # type: ignore[assignment]
    rt.pool = InlineExecutor()  # type: ignore[assignment]
    rt.http = httpx.Client(transport=httpx.MockTransport(provider.handle))
    rt.retries = Retries(rt.settings, rng=random.Random(4))
    rt.s3 = "no S3 in the unit tier"  # type: ignore[assignment]
    return rt


def add_job(rt: Runtime, job_id: str = "job1", lane: Lane = Lane.SUBMIT, **fields: Any) -> Job:
    """A job in the fake store, claimed in lane by TOKEN."""
    fields.setdefault("request", {"model": "sora-2", "prompt": "a cat"})
    fields.setdefault("status", JobStatus.QUEUED)
    record = JobRecord(id=job_id, **fields)
    rt.store.records[job_id] = record  # type: ignore[attr-defined]
    rt.store.schedule.leases[job_id] = TOKEN  # type: ignore[attr-defined]
    return Job(job_id, record.model_copy(deep=True), Claim(rt, lane, TOKEN))
