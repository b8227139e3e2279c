"""The submit step's decisions (worker/tasks.py), above all after a create that may have taken
effect, per dialect: resent with the same key (router), looked up by its key (kling), or the
job ended "uncertain_create" (luma)."""

import json

import httpx

from producer.core.names import Lane
from producer.core.records import AttemptOutcome, JobStatus, ProviderAttempt
from tests.unit.fake_runtime import Provider, add_job, fake_runtime
from worker import tasks

CREATE = "/v1/videos"
KLING_CREATE = "/v1/videos/text2video"
LUMA_CREATE = "/dream-machine/v1/generations"


def _router(answers: Provider, **settings):
    rt = fake_runtime(answers, api_format="openai", **settings)
    job = add_job(rt)
    rt.limits.routes["job1"] = ["default"]
    return rt, job


def _kling(answers: Provider, **fields):
    rt = fake_runtime(answers, api_dialect="kling", api_key="ak-unit:sk-unit-secret-part")
    job = add_job(rt, request={"model": "kling-v1", "prompt": "a cat"}, **fields)
    rt.limits.routes["job1"] = ["default"]
    return rt, job


def _luma(answers: Provider, **fields):
    rt = fake_runtime(answers, api_dialect="luma")
    job = add_job(rt, request={"model": "ray-2", "prompt": "a cat"}, **fields)
    rt.limits.routes["job1"] = ["default"]
    return rt, job


def _uncertain_earlier() -> list[ProviderAttempt]:
    return [ProviderAttempt(provider="default", outcome=AttemptOutcome.UNCERTAIN)]


def test_a_clean_create_submits_the_job_and_schedules_its_first_poll():
    provider = Provider()
    provider.on("POST", CREATE, httpx.Response(200, json={"id": "task-1", "status": "queued"}))
    rt, job = _router(provider)
    tasks.submit.run(job)
    stored = rt.store.get("job1")
    assert (stored.status, stored.provider_task_id) == (JobStatus.SUBMITTED, "task-1")
    assert [a.outcome for a in stored.provider_attempts] == [AttemptOutcome.CREATED]
    assert provider.sent("POST", CREATE)[0].headers["idempotency-key"] == "job1"
    assert rt.store.schedule.last("job1").lane is Lane.POLL
    assert "job1" in rt.limits.held  # its slot is kept while the provider generates


def test_a_job_without_a_route_is_routed_and_due_again_at_once():
    provider = Provider()
    rt = fake_runtime(provider)
    job = add_job(rt)
    tasks.submit.run(job)
    assert rt.limits.routes["job1"] == ["default"]
    assert rt.store.schedule.last("job1").lane is Lane.SUBMIT
    assert provider.calls == []  # its create waits for a slot at the head of its route


def test_a_job_of_a_cancelled_batch_is_cancelled_without_a_create():
    provider = Provider()
    rt, _ = _router(provider)
    job = add_job(rt, batch_id="b1")
    rt.store.cancelled_batches.add("b1")
    tasks.submit.run(job)
    assert rt.store.get("job1").status is JobStatus.CANCELLED
    assert provider.calls == []


def test_a_rate_limited_create_waits_the_providers_hint_at_the_same_provider():
    provider = Provider()
    provider.on("POST", CREATE, httpx.Response(429, headers={"retry-after": "9"}))
    rt, job = _router(provider)
    tasks.submit.run(job)
    stored = rt.store.get("job1")
    assert stored.provider_attempts[-1].outcome is AttemptOutcome.REFUSED
    assert stored.provider is None  # certainly not taken: free to go elsewhere
    placed = rt.store.schedule.last("job1")
    assert (placed.lane, placed.delay_s) == (Lane.SUBMIT, 9.0)


def test_a_5xx_on_a_dialect_with_an_idempotency_key_is_retried_at_the_same_provider():
    provider = Provider()
    provider.on("POST", CREATE, httpx.Response(502, text="bad gateway"))
    rt, job = _router(provider)
    tasks.submit.run(job)
    stored = rt.store.get("job1")
    assert stored.provider_attempts[-1].outcome is AttemptOutcome.UNCERTAIN
    assert stored.provider == "default" and rt.limits.routes["job1"] == ["default"]
    assert stored.status is JobStatus.QUEUED
    assert rt.store.schedule.last("job1").lane is Lane.SUBMIT


def test_a_create_whose_answer_never_came_is_resent_with_the_same_key():
    provider = Provider()
    provider.on("POST", CREATE, httpx.Response(200, json={"id": "task-1", "status": "queued"}))
    sent = [ProviderAttempt(provider="default", outcome=AttemptOutcome.SENT)]
    rt, _ = _router(provider)
    job = add_job(rt, provider="default", provider_attempts=sent, attempts=1)
    tasks.submit.run(job)
    assert provider.sent("POST", CREATE)[0].headers["idempotency-key"] == "job1"
    outcomes = [a.outcome for a in rt.store.get("job1").provider_attempts]
    assert outcomes == [AttemptOutcome.UNCERTAIN, AttemptOutcome.CREATED]


def test_submit_gives_up_after_the_maximum_attempts():
    provider = Provider()
    provider.on("POST", CREATE, httpx.Response(503, text="busy"))
    rt, _ = _router(provider, submit_max_attempts=2)
    job = add_job(rt, attempts=1)
    tasks.submit.run(job)
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.FAILED
    assert stored.error.message.startswith("gave up after 2 attempts")


def test_a_refused_request_fails_the_job_with_the_providers_code():
    provider = Provider()
    refusal = {"error": {"message": "no", "code": "bad_prompt"}}
    provider.on("POST", CREATE, httpx.Response(400, json=refusal))
    rt, job = _router(provider)
    tasks.submit.run(job)
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.FAILED and stored.error.code == "bad_prompt"
    assert stored.provider_attempts[-1].outcome is AttemptOutcome.FAILED


def test_kling_finds_an_uncertain_create_by_its_key_instead_of_sending_it_again():
    provider = Provider()
    found = {"code": 0, "data": {"task_id": "k-7", "task_status": "processing"}}
    provider.on("GET", KLING_CREATE, httpx.Response(200, json=found))
    rt, job = _kling(provider, provider="default", provider_attempts=_uncertain_earlier())
    tasks.submit.run(job)
    assert provider.sent("POST", KLING_CREATE) == []
    assert provider.sent("GET", KLING_CREATE)[0].url.params["external_task_id"] == "job1"
    stored = rt.store.get("job1")
    assert (stored.status, stored.provider_task_id) == (JobStatus.SUBMITTED, "k-7")


def test_kling_sends_the_create_again_when_its_lookup_finds_nothing():
    provider = Provider()
    provider.on("GET", KLING_CREATE, httpx.Response(404, json={"code": 1201, "message": "none"}))
    made = {"code": 0, "data": {"task_id": "k-8", "task_status": "submitted"}}
    provider.on("POST", KLING_CREATE, httpx.Response(200, json=made))
    rt, job = _kling(provider, provider="default", provider_attempts=_uncertain_earlier())
    tasks.submit.run(job)
    body = json.loads(provider.sent("POST", KLING_CREATE)[0].content)
    assert body["external_task_id"] == "job1"  # the same key as the uncertain one
    assert rt.store.get("job1").provider_task_id == "k-8"


def test_kling_ends_the_job_uncertain_when_its_lookup_is_refused():
    provider = Provider()
    provider.on("GET", KLING_CREATE, httpx.Response(403, json={"code": 1103, "message": "no"}))
    rt, job = _kling(provider, provider="default", provider_attempts=_uncertain_earlier())
    tasks.submit.run(job)
    stored = rt.store.get("job1")
    assert stored.error.code == "uncertain_create" and "looking it up was refused" in (
        stored.error.message
    )
    assert provider.sent("POST", KLING_CREATE) == []


def test_kling_defers_a_lookup_the_provider_cannot_answer_now():
    provider = Provider()
    provider.on("GET", KLING_CREATE, httpx.Response(503, headers={"retry-after": "4"}))
    rt, job = _kling(provider, provider="default", provider_attempts=_uncertain_earlier())
    tasks.submit.run(job)
    assert rt.store.get("job1").status is JobStatus.QUEUED
    placed = rt.store.schedule.last("job1")
    assert (placed.lane, placed.delay_s) == (Lane.SUBMIT, 4.0)


def test_a_dialect_without_key_or_lookup_ends_an_uncertain_create_for_an_operator():
    provider = Provider()
    provider.on("POST", LUMA_CREATE, httpx.Response(504, text="gateway timeout"))
    rt, job = _luma(provider)
    tasks.submit.run(job)
    stored = rt.store.get("job1")
    assert stored.status is JobStatus.FAILED and stored.error.code == "uncertain_create"
    assert "luma dialect has no idempotency key and no lookup" in stored.error.message
    assert len(provider.sent("POST", LUMA_CREATE)) == 1


def test_a_dialect_without_key_or_lookup_never_resends_a_create_that_may_have_taken_effect():
    provider = Provider()
    rt, job = _luma(provider, provider="default", provider_attempts=_uncertain_earlier())
    tasks.submit.run(job)
    assert provider.calls == []
    assert rt.store.get("job1").error.code == "uncertain_create"
