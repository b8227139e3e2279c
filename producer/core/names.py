"""The contract between producer and worker: task names and Redis keys.

The producer reaches the worker by these names only, never by importing worker code.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

from producer.core.tenants import DEFAULT_TENANT

SUBMIT = "videoqueue.submit"
POLL = "videoqueue.poll"
FINALIZE = "videoqueue.finalize"
NOTIFY = "videoqueue.notify"
NOTIFY_BATCH = "videoqueue.notify_batch"


def poll_queue(queue: str) -> str:
    """The queue poll batches travel on, so that due polls never wait behind submits."""
    return f"{queue}.poll"


def queues(queue: str) -> list[str]:
    """Every Celery queue a deployment's workers consume."""
    return [queue, poll_queue(queue)]


class Lane(StrEnum):
    """Which part of the durable schedule an entry waits in (see producer/core/schedule.py).

    Every unfinished job has exactly one entry, in the lane its status calls for; a lane
    says which task the entry's step runs as and which Celery queue carries it.
    """

    POLL = "poll"  # at the provider: its next status query
    # Waiting to be submitted: due, then in its tenant's queue for a slot or a token, taken
    # by fair share across tenants and by priority within one (lua/claim_submit.lua).
    SUBMIT = "submit"
    FINALIZE = "finalize"  # done at the provider: the copy into S3
    NOTIFY = "notify"  # ended: its webhook's next delivery attempt (keyed by job)
    NOTIFY_BATCH = "notify_batch"  # a batch's batch.completed webhook (keyed by batch)

    @property
    def task(self) -> str:
        return _LANE_TASKS[self]

    def queue(self, queue: str) -> str:
        """The Celery queue this lane's messages travel on."""
        return poll_queue(queue) if self is Lane.POLL else queue


_LANE_TASKS = {
    Lane.POLL: POLL, Lane.SUBMIT: SUBMIT, Lane.FINALIZE: FINALIZE, Lane.NOTIFY: NOTIFY,
    Lane.NOTIFY_BATCH: NOTIFY_BATCH,
}  # fmt: skip

# The order the pump serves lanes in each tick: polls first (they free provider slots and
# notice finished videos), then submits.
LANES = list(Lane)
# Lanes whose steps call the provider's API, and so spend the shared rate limit.
RATE_LIMITED = frozenset({Lane.POLL, Lane.SUBMIT})
SUBMIT_LANES = frozenset({Lane.SUBMIT})


# The event type of a batch's webhook (a job's are video.completed, video.failed, ...).
BATCH_COMPLETED = "batch.completed"
# A batch's schedule entry (its member in the notify_batch lane, its lease, its fault count)
# is "batch:<id>": a job's id never holds a colon, so whatever id a caller gives a batch
# (`job_<hex>` included) it cannot name a job's entry. Entries placed before batches had
# this prefix are the bare batch id: the notify_batch lane holds nothing else, so they are
# still read as batches.
_BATCH_MEMBER = "batch:"


def batch_member(batch_id: str) -> str:
    """The batch's member in the schedule, its lease and its fault count."""
    return _BATCH_MEMBER + batch_id


def batch_of_member(member: str) -> str:
    """The batch id of a notify_batch entry's member."""
    return member.removeprefix(_BATCH_MEMBER)


def account_of(api_key: str) -> str:
    """The name limits are kept under for an API key: a fingerprint, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


class Keys:
    """Every Redis key videoqueue writes, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def idempotency(self, key: str, tenant: str = DEFAULT_TENANT) -> str:
        """A tenant's claim on an idempotency key: the job id that holds it. The default
        tenant's keep the name they had before tenants; another tenant's are under `idem@`,
        which no default claim's name starts with (a tenant's name holds no ":" or "@"), so no
        key of one tenant can name another's claim."""
        if tenant == DEFAULT_TENANT:
            return f"{self.prefix}:idem:{key}"
        return f"{self.prefix}:idem@{tenant}:{key}"

    def file_url(self, job_id: str) -> str:
        """The provider's file URL for a finished job, kept an hour for the copy step (it
        may be signed: it is kept out of the record, which webhooks and status print)."""
        return f"{self.prefix}:job:{job_id}:file"

    def event_body(self, job_id: str, rerun: int = 0) -> str:
        """The webhook body of the job's end in its given run (0: its first, before any
        `videoqueue retry`), fixed at its first delivery attempt."""
        return f"{self.prefix}:job:{job_id}:event" + (f":{rerun}" if rerun else "")

    def batch_event_body(self, batch_id: str) -> str:
        """The batch's batch.completed body, fixed at its first delivery attempt."""
        return f"{self.prefix}:batch:{batch_id}:event"

    def unknown_statuses(self) -> str:
        """A hash counting status words no vocabulary knew."""
        return f"{self.prefix}:stats:unknown_status"

    def status_counts(self) -> str:
        """A hash: job status -> jobs in it now whose records do not expire (moved in the
        transaction of every change)."""
        return f"{self.prefix}:stats:jobs"

    def expiring_status(self, status: str) -> str:
        """A sorted set: job id -> when its record expires (Unix ms), for the jobs in status
        whose records will expire (ended, or staged): they count while it is in the future,
        so the counts forget a job when its record goes."""
        return f"{self.prefix}:stats:jobs:expiring:{status}"

    def finished_counts(self) -> str:
        """A hash: terminal status -> jobs that ever ended so (only ever incremented, in the
        transaction of the job's terminal move; a retried job that ends again counts again)."""
        return f"{self.prefix}:stats:finished"

    def job_index(self) -> str:
        """A sorted set: job id -> when it was enqueued (Redis's clock), trimmed to the
        records' retention at every enqueue (`videoqueue jobs list`)."""
        return f"{self.prefix}:index:jobs"

    def tenant_job_index(self, tenant: str) -> str:
        """A sorted set: the tenant's job ids -> when each was enqueued (Redis's clock),
        written and trimmed with job_index() (producer.jobs.list_jobs pages it)."""
        return f"{self.prefix}:index:jobs:tenant:{tenant}"

    def api_keys(self) -> str:
        """A hash: API key id -> the key's record (JSON: tenant, admin, times, the secret's
        sha256; never the secret)."""
        return f"{self.prefix}:apikeys"

    def api_key_hashes(self) -> str:
        """A hash: sha256 of a live API key's secret -> who it is (JSON: key id, tenant,
        admin); a revoked key's entry is removed."""
        return f"{self.prefix}:apikeys:by_hash"

    def api_key_rate(self, key_id: str) -> str:
        """The token bucket of one API key's requests."""
        return f"{self.prefix}:apikeys:{key_id}:rate"

    def batch(self, batch_id: str) -> str:
        """A hash: tenant, total, ended, created_at, finished_at, webhook, metadata, ..."""
        return f"{self.prefix}:batch:{batch_id}"

    def batch_jobs(self, batch_id: str) -> str:
        """A list of the batch's job ids, in request order."""
        return f"{self.prefix}:batch:{batch_id}:jobs"

    def batch_claims(self, batch_id: str) -> str:
        """A hash of the idempotency keys a batch claimed while staged (released with it):
        claim key -> "<request index> <job id>"."""
        return f"{self.prefix}:batch:{batch_id}:claims"

    def batch_staged_claims(self, batch_id: str) -> str:
        """A list of the idempotency keys a batch claimed while staged, as producers before
        batch_claims() wrote them (still released)."""
        return f"{self.prefix}:batch:{batch_id}:staged_claims"

    def batch_counts(self, batch_id: str) -> str:
        """A hash: job status -> number of the batch's jobs in it."""
        return f"{self.prefix}:batch:{batch_id}:counts"

    def in_flight(self, account: str) -> str:
        """A sorted set of the jobs holding a provider slot (score: when they took it)."""
        return f"{self.prefix}:limits:{account}:in_flight"

    def rate(self, account: str) -> str:
        """The token bucket of the shared request rate."""
        return f"{self.prefix}:limits:{account}:rate"

    def parked(self, lane: Lane, account: str, waiting_for: str) -> str:
        """A sorted set: the lane's parked entries waiting for the account's "token" or
        "slot" -> when they were due (worker/pump.py)."""
        return f"{self.prefix}:schedule:{lane.value}:parked:{account}:{waiting_for}"

    def routes(self) -> str:
        """A hash: job -> the providers its submit or polls may go to (producer/core/limits.py)."""
        return f"{self.prefix}:limits:routes"

    def batch_usage(self, batch_id: str) -> str:
        """A hash: usage field -> the sum over the batch's ended jobs."""
        return f"{self.prefix}:batch:{batch_id}:usage"

    def schedule(self, lane: Lane) -> str:
        """A sorted set: entry (a job's id, or batch_member()) -> when it is next due, by
        Redis's clock."""
        return f"{self.prefix}:schedule:{lane.value}"

    def legacy_bulk_schedule(self) -> str:
        """The lane batch jobs waited in before priorities (submit_bulk): the submit claim
        moves what a deployment left there into the submit lane."""
        return f"{self.prefix}:schedule:submit_bulk"

    def deadlines(self) -> str:
        """A sorted set: job -> its own deadline (Unix s), for the jobs the submit claim has
        taken in (a job still waiting for a slot at its deadline is claimed to end it)."""
        return f"{self.prefix}:schedule:deadlines"

    def fair_active(self) -> str:
        """A sorted set: tenant queue with waiting jobs -> its virtual start tag (the claim
        serves the lowest: lua/claim_submit.lua)."""
        return f"{self.prefix}:fair:active"

    def fair_capped(self) -> str:
        """A sorted set: tenant at its max_in_flight -> when the claim looks at it again (0:
        at the next claim, set when one of its jobs gives back its slot)."""
        return f"{self.prefix}:fair:capped"

    def fair_tags(self) -> str:
        """A hash: tenant queue -> its next virtual start tag (kept while it is idle)."""
        return f"{self.prefix}:fair:tags"

    def fair_vtime(self) -> str:
        """The virtual time: the start tag of the last job a claim handed out."""
        return f"{self.prefix}:fair:vtime"

    def fair_owners(self) -> str:
        """A hash: job taken in by the submit claim -> its tenant (until it gives back its
        tenant slot)."""
        return f"{self.prefix}:fair:owners"

    def fair_reserving(self) -> str:
        """A set: the tenants whose policy reserves slots (written with the policy,
        producer/core/tenant_policies.py)."""
        return f"{self.prefix}:fair:reserving"

    def tenant_prefix(self) -> str:
        """What every tenant's own keys start with (the scripts append name and suffix)."""
        return f"{self.prefix}:tenant:"

    def tenant_ready(self, queue: str) -> str:
        """A sorted set: the tenant's due jobs waiting for a slot -> due time minus priority
        times the aging step (lowest first); queue "*" holds every tenant's without fair
        share."""
        return f"{self.prefix}:tenant:{queue}:ready"

    def tenant_in_flight(self, tenant: str) -> str:
        """A sorted set: the tenant's jobs holding a slot (at any provider, or claimed for a
        submit) -> until when (as the accounts' in_flight sets): its max_in_flight counts
        these."""
        return f"{self.prefix}:tenant:{tenant}:in_flight"

    def schedules(self) -> list[str]:
        """Every lane's sorted set, in LANES order (the order scripts take them in)."""
        return [self.schedule(lane) for lane in LANES]

    def leases(self) -> str:
        """A hash: entry -> the token of the claim that holds it (absent: not claimed)."""
        return f"{self.prefix}:schedule:leases"

    def pumps(self) -> str:
        """A sorted set: each live pump's token -> when it last said it was alive (Redis
        time); the pumps space their idle passes by how many there are (worker/pump.py)."""
        return f"{self.prefix}:pumps"

    def faults(self) -> str:
        """A hash: entry -> how many unexpected exceptions its steps raised."""
        return f"{self.prefix}:schedule:faults"

    def hastened(self, member: str) -> str:
        """When (Redis's clock, s) a provider's callback said the member's task ended: its next
        poll is due now, even if a step held its entry then (producer/core/schedule.py)."""
        return f"{self.prefix}:schedule:hastened:{member}"

    def claim_seq(self) -> str:
        """A counter that makes every claim's token unique."""
        return f"{self.prefix}:schedule:seq"

    def durations(self, model: str) -> str:
        """A list of the latest generation times (s) seen for one model and size."""
        return f"{self.prefix}:durations:{model}"

    def callback_outcomes(self, provider: str) -> str:
        """A list: "1" for each of the provider's latest finished jobs that no callback
        announced, "0" for the others (worker/history.py CallbackLoss)."""
        return f"{self.prefix}:callback:outcomes:{provider}"

    def events(self, job_id: str) -> str:
        """A pub/sub channel that announces each change of a job (for wait())."""
        return f"{self.prefix}:events:{job_id}"

    def upload_sweep(self) -> str:
        """Set (with an expiry) while a worker's sweep of orphaned uploads is recent."""
        return f"{self.prefix}:uploads:swept"

    def dead_letters(self) -> str:
        """A hash: webhook-id -> the given-up delivery (JSON)."""
        return f"{self.prefix}:webhooks:dead"

    def dead_letters_by_time(self) -> str:
        """A sorted set: webhook-id -> when it was dead-lettered (ms), to drop the oldest."""
        return f"{self.prefix}:webhooks:dead:by_time"

    def replication_fence(self) -> str:
        """Written just before a Redis WAIT, on the WAIT's own connection: replicas have
        everything written before it once they have it (JobStore.wait_for_replicas)."""
        return f"{self.prefix}:replication:fence"

    def tenant_policy(self, tenant: str) -> str:
        """A hash: the tenant's weight, max_in_flight, reserved, budget_usd, budget_period
        (producer/core/tenant_policies.py; an absent field is its default)."""
        return f"{self.prefix}:tenant:{tenant}:policy"

    def tenants(self) -> str:
        """A set: every tenant a policy was set for."""
        return f"{self.prefix}:tenants"

    def ledger(self, tenant: str) -> str:
        """A hash: the tenant's money in micro-dollars (producer/core/ledger.py): `reserved`
        (held by its unfinished jobs), `charged` (ever), `d:<UTC day>` and `m:<UTC month>`
        (charged then), `p:<provider>` and `pd:<UTC day>:<provider>` (charged there)."""
        return f"{self.prefix}:ledger:tenant:{tenant}"

    def ledger_tenants(self) -> str:
        """A sorted set: every tenant the ledger has seen -> its charged micro-dollars."""
        return f"{self.prefix}:ledger:tenants"

    def ledger_totals(self) -> str:
        """A hash: `reserved` and `charged` micro-dollars summed over every tenant."""
        return f"{self.prefix}:ledger:totals"

    def console_session(self, session_digest: str) -> str:
        """A console sign-in (producer/http/console/sessions.py): the key id, tenant and CSRF
        token of the session whose cookie hashes (sha256) to session_digest; it expires."""
        return f"{self.prefix}:console:session:{session_digest}"

    def callback_token(self, token_digest: str) -> str:
        """ "<provider> <job id>" of a callback URL's token, under the token's sha256 (the token
        itself is never stored; producer/core/callbacks.py)."""
        return f"{self.prefix}:callback:token:{token_digest}"

    def callback_delivery(self, provider: str, delivery_digest: str) -> str:
        """Set while a provider's delivery (by the sha256 of its id) counts as seen: a replay."""
        return f"{self.prefix}:callback:seen:{provider}:{delivery_digest}"

    def character(self, character_id: str) -> str:
        """The tenant a character made through videoqueue belongs to (a string)."""
        return f"{self.prefix}:character:{character_id}"
