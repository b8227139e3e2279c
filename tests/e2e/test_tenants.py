"""Tenants through a real Redis: each tenant's jobs listed and paged apart, its idempotency
keys its own, its batch ids its own, and an expired record skipped and forgotten by the
listing. No workers: enqueueing and listing are the producer's and Redis's alone."""

from __future__ import annotations

import json
import time

import pytest

from producer import InvalidRequest, enqueue, enqueue_batch, get, get_batch
from producer.core.records import JobRecord
from producer.core.store import NewJob, store
from producer.jobs import list_jobs
from tests.e2e.conftest import env_of
from tests.e2e.test_cli import run


def _pages(settings, tenant: str | None, limit: int) -> list[list[str]]:
    """Every page of a listing, by job id, following `after` as a client would."""
    pages: list[list[str]] = []
    after = None
    while True:
        page, more = list_jobs(tenant=tenant, limit=limit, after=after, settings=settings)
        pages.append([r.id for r in page])
        if not more:
            return pages
        after = page[-1].id


def test_two_tenants_jobs_are_listed_apart_newest_first_and_paged(bare_settings):
    s = bare_settings
    acme, globex = [], []
    for i in range(5):
        acme.append(enqueue({"prompt": f"acme {i}"}, tenant="acme", settings=s))
        if i < 3:
            globex.append(enqueue({"prompt": f"globex {i}"}, tenant="globex", settings=s))

    assert _pages(s, "acme", 2) == [acme[:2:-1], acme[2:0:-1], acme[:1]]
    assert _pages(s, "globex", 10) == [globex[::-1]]
    page, more = list_jobs(tenant="acme", limit=5, settings=s)
    assert [r.id for r in page] == acme[::-1] and more is False
    assert {r.tenant for r in page} == {"acme"}
    # An admin's listing (no tenant) has both, still newest first.
    everyone = [r for p in _pages(s, None, 3) for r in p]
    assert sorted(everyone) == sorted(acme + globex) and everyone[0] == acme[-1]
    assert list_jobs(tenant="initech", settings=s) == ([], False)


def test_another_tenants_job_id_is_no_cursor_in_a_tenants_listing(bare_settings):
    s = bare_settings
    enqueue({"prompt": "a"}, tenant="acme", settings=s)
    theirs = enqueue({"prompt": "g"}, tenant="globex", settings=s)
    for after in (theirs, "job_unknown"):
        with pytest.raises(InvalidRequest) as caught:
            list_jobs(tenant="acme", after=after, settings=s)
        assert caught.value.errors == [{"field": "after", "message": "no such job in this listing"}]


@pytest.mark.parametrize(
    ("arguments", "field"),
    [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": True}, "limit"),
     ({"after": ""}, "after"), ({"after": "\ud800"}, "after"), ({"tenant": "a:b"}, "tenant")],
)  # fmt: skip
def test_bad_listing_arguments_are_refused_naming_the_field(bare_settings, arguments, field):
    with pytest.raises(InvalidRequest) as caught:
        list_jobs(**{"tenant": "acme", **arguments}, settings=bare_settings)
    assert caught.value.errors[0]["field"] == field


def test_a_batchs_jobs_are_its_tenants_and_paged_without_repeats_or_gaps(bare_settings):
    """A batch's jobs are indexed at one instant: the cursor (a job id, not a time) still
    pages through them once each."""
    s = bare_settings
    batch_id = enqueue_batch([{"prompt": f"item {i}"} for i in range(7)], tenant="acme",
                             settings=s)  # fmt: skip
    batch = get_batch(batch_id, settings=s)
    assert batch.tenant == "acme" and batch.public()["tenant"] == "acme"
    pages = _pages(s, "acme", 3)
    assert [len(p) for p in pages] == [3, 3, 1]
    listed = [j for p in pages for j in p]
    assert sorted(listed) == sorted(batch.job_ids)
    assert {get(j, settings=s).tenant for j in listed} == {"acme"}
    assert list_jobs(tenant="default", settings=s) == ([], False)


def test_an_expired_record_is_skipped_and_leaves_the_index(bare_settings):
    s = bare_settings
    st = store(s)
    jobs = [enqueue({"prompt": f"{i}"}, tenant="acme", settings=s) for i in range(4)]
    st.redis.pexpire(st.keys.job(jobs[2]), 1)  # as a finished job's record expires
    time.sleep(0.05)

    page, more = list_jobs(tenant="acme", limit=2, settings=s)
    assert [r.id for r in page] == [jobs[3], jobs[1]] and more is True
    assert st.redis.zscore(st.keys.tenant_job_index("acme"), jobs[2]) is None
    assert st.redis.zscore(st.keys.tenant_job_index("acme"), jobs[1]) is not None
    assert [r.id for r in list_jobs(tenant="acme", after=jobs[1], settings=s)[0]] == [jobs[0]]


def test_an_idempotency_key_in_two_tenants_makes_two_jobs(bare_settings):
    s = bare_settings
    request = {"prompt": "x", "idempotency_key": "order-17"}
    acme = enqueue(request, tenant="acme", settings=s)
    assert enqueue(request, tenant="acme", settings=s) == acme
    globex = enqueue(request, tenant="globex", settings=s)
    default = enqueue(request, settings=s)
    assert len({acme, globex, default}) == 3
    assert enqueue(request, tenant="default", settings=s) == default
    assert [get(j, settings=s).tenant for j in (globex, default)] == ["globex", "default"]

    # A batch item's key is deduplicated against its own tenant's jobs only.
    batch = get_batch(enqueue_batch([request], tenant="acme", settings=s), settings=s)
    assert batch.deduplicated == {"0": acme} and batch.total == 0
    other = get_batch(enqueue_batch([request], tenant="initech", settings=s), settings=s)
    assert other.deduplicated == {} and other.total == 1


def test_a_batch_id_another_tenant_has_is_refused_and_nothing_is_written(bare_settings):
    s = bare_settings
    enqueue_batch([{"prompt": "a"}], batch_id="spring", tenant="acme", settings=s)
    with pytest.raises(InvalidRequest) as caught:
        enqueue_batch([{"prompt": "g"}] * 2, batch_id="spring", tenant="globex", settings=s)
    assert caught.value.errors[0]["field"] == "batch_id"
    batch = get_batch("spring", settings=s)
    assert (batch.tenant, batch.total) == ("acme", 1)
    assert list_jobs(tenant="globex", settings=s) == ([], False)
    # Its own tenant retrying the same batch gets it back as it is.
    assert enqueue_batch([{"prompt": "a"}], batch_id="spring", tenant="acme", settings=s)
    assert get_batch("spring", settings=s).total == 1


def test_a_bad_tenant_is_refused_naming_it_and_nothing_is_written(bare_settings):
    s = bare_settings
    st = store(s)
    for bad in ("a:b", "", "x" * 65):
        with pytest.raises(InvalidRequest) as caught:
            enqueue({"prompt": "x"}, tenant=bad, settings=s)
        assert caught.value.errors[0]["field"] == "tenant"
        with pytest.raises(InvalidRequest) as caught:
            enqueue_batch([{"prompt": "x"}], tenant=bad, settings=s)
        assert caught.value.errors[0]["field"] == "tenant"
    assert list(st.redis.scan_iter(f"{s.key_prefix}*")) == []


def test_a_job_without_a_tenant_is_the_default_tenants(bare_settings):
    s = bare_settings
    job_id = enqueue({"prompt": "x"}, settings=s)
    record: JobRecord = get(job_id, settings=s)
    assert record.tenant == "default" and record.public()["tenant"] == "default"
    assert [r.id for r in list_jobs(tenant="default", settings=s)[0]] == [job_id]


def test_submit_and_batch_take_a_tenant_on_the_command_line(bare_settings):
    env = env_of(bare_settings)
    submitted = run(env, "submit", "-", "--json", "--tenant", "acme", stdin='{"prompt": "x"}')
    assert submitted.returncode == 0, submitted.stderr
    status = run(env, "status", json.loads(submitted.stdout)["id"], "--json")
    assert json.loads(status.stdout)["tenant"] == "acme"

    batch = run(env, "batch", "-", "--json", "--tenant", "globex", stdin='{"prompt": "y"}\n')
    assert batch.returncode == 0, batch.stderr
    shown = run(env, "batch-status", json.loads(batch.stdout)["id"], "--json")
    assert json.loads(shown.stdout)["tenant"] == "globex"

    listed = run(env, "jobs", "list", "--tenant", "acme", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [json.loads(submitted.stdout)["id"]]

    refused = run(env, "submit", "-", "--tenant", "a:b", stdin='{"prompt": "x"}')
    assert refused.returncode == 2 and "tenant" in refused.stderr


def test_a_tenants_index_forgets_jobs_older_than_the_retention(bare_settings):
    """Trimmed at each enqueue of the tenant's (and at each batch), as the job index is: it
    stays bounded with the records' retention."""
    s = bare_settings.model_copy(update={"record_ttl_s": 0.5})
    st = store(s)
    first = enqueue({"prompt": "x"}, tenant="acme", settings=s)
    time.sleep(0.6)
    second = enqueue({"prompt": "x"}, tenant="acme", settings=s)
    indexed = {m.decode() for m in st.redis.zrange(st.keys.tenant_job_index("acme"), 0, -1)}
    assert indexed == {second}
    assert get(first, settings=s).id == first  # the record itself is still there
    time.sleep(0.6)
    batch = get_batch(enqueue_batch([{"prompt": "y"}], tenant="acme", settings=s), settings=s)
    indexed = {m.decode() for m in st.redis.zrange(st.keys.tenant_job_index("acme"), 0, -1)}
    assert indexed == set(batch.job_ids)


def test_a_tenant_racing_to_another_tenants_new_batch_id_leaves_nothing_on_it(bare_settings):
    # Two tenants pass enqueue_batch's early check at once; the script decides: the loser's
    # chunk, and its batch webhook and metadata, are written nowhere.
    s = bare_settings
    hook = "https://acme.example/hook"
    enqueue_batch([{"prompt": "a"}], batch_id="race", tenant="acme", settings=s,
                  batch_webhook_url=hook, metadata={"who": "acme"})  # fmt: skip
    st = store(s)
    loser = NewJob(id="job_" + "0" * 32, record_json="{}", idempotency_key=None)
    fields = {"webhook_url": "https://globex.example/hook", "metadata": json.dumps({"who": "g"})}
    with pytest.raises(InvalidRequest) as caught:
        st.stage_batch_chunk("race", [loser], first_index=0, fields=fields, tenant="globex")
    assert caught.value.errors[0]["field"] == "batch_id"
    batch = get_batch("race", settings=s)
    assert (batch.tenant, batch.total, batch.metadata) == ("acme", 1, {"who": "acme"})
    assert st.redis.hget(st.keys.batch("race"), "webhook_url") == hook.encode()
    assert not st.redis.exists(st.keys.job(loser.id))


def test_another_tenants_character_is_refused_as_unknown_and_nothing_is_written(bare_settings):
    s = bare_settings
    st = store(s)
    st.set_character_tenant("char_acme", "acme")
    request = {"prompt": "a duel", "characters": ["char_provider_side", "char_acme"]}
    with pytest.raises(InvalidRequest) as caught:
        enqueue(request, tenant="globex", settings=s)
    assert caught.value.errors == [
        {"field": "characters.1", "message": "no such character (create it with this tenant's key)"}
    ]
    with pytest.raises(InvalidRequest) as caught:
        enqueue_batch([{"prompt": "fine"}, request], tenant="globex", settings=s)
    assert [(p["index"], p["field"]) for p in caught.value.errors] == [(1, "characters.1")]
    assert list_jobs(tenant="globex", settings=s) == ([], False)
    # Its own tenant, and a character the provider made outside videoqueue, are fine.
    assert get(enqueue(request, tenant="acme", settings=s), settings=s).tenant == "acme"
    assert enqueue({"prompt": "x", "characters": ["char_provider_side"]}, tenant="globex",
                   settings=s)  # fmt: skip
