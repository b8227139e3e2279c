"""The public job and batch objects: their published JSON Schemas are the models', and a
public dump is the public object, the scheduler's fields left out (the stored record keeps
them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from producer.core.records import (
    AttemptOutcome,
    BatchRecord,
    JobRecord,
    JobStatus,
    Output,
    ProviderAttempt,
    PublicJob,
    WebhookDelivery,
)
from producer.core.schemas import schema, schema_path, schema_text
from tests.public_objects import SCHEDULER_FIELDS, assert_public


@pytest.mark.parametrize("name", ["job", "batch"])
def test_the_committed_schema_is_the_models(name):
    assert schema_path(name).read_text() == schema_text(name), (
        f"{schema_path(name)} is stale: run `python -m producer.core.schemas`"
    )


def test_the_job_schema_names_every_public_field_and_none_of_the_schedulers():
    properties = schema("job")["properties"]
    assert properties.keys() == PublicJob.model_fields.keys()
    # Webhook bodies leave out the webhook's own delivery state, which changes per attempt.
    assert set(schema("job")["required"]) == properties.keys() - {"webhook"}
    assert not SCHEDULER_FIELDS & properties.keys()
    assert JobRecord.model_fields.keys() >= SCHEDULER_FIELDS


def _record() -> JobRecord:
    return JobRecord(
        id="job_1", status=JobStatus.COMPLETED, request={"prompt": "x"}, attempts=1,
        output=Output(bucket="videos", key="videos/job_1.mp4", size_bytes=9, sha256="ab"),
        webhook=WebhookDelivery(url="https://example.com/hook", event_type="video.completed"),
        provider="default", usage={"cost": 0.5},
        provider_attempts=[ProviderAttempt(provider="default", outcome=AttemptOutcome.CREATED)],
        polls=4, recoveries=1, estimate_s=11.8, progress_s=9.1, polled_s=12.2, copy_attempts=1,
    )  # fmt: skip


def test_a_records_public_dump_is_the_public_job_without_the_schedulers_fields():
    public = _record().public()
    assert_public(public, "job")
    assert public.keys() == PublicJob.model_fields.keys()


def test_the_stored_record_keeps_the_schedulers_fields():
    record = _record()
    stored = JobRecord.model_validate_json(record.model_dump_json())
    assert (stored.polls, stored.recoveries, stored.copy_attempts) == (4, 1, 1)
    assert (stored.estimate_s, stored.progress_s, stored.polled_s) == (11.8, 9.1, 12.2)


def test_a_batchs_public_dump_is_the_public_batch():
    batch = BatchRecord(
        id="batch_1", total=2, counts={"completed": 2}, ended=2,
        created_at="2026-12-05T00:00:00.000Z", job_ids=["job_1", "job_2"],
    )  # fmt: skip
    assert_public(batch.public(), "batch")
    assert set(schema("batch")["required"]) == BatchRecord.model_fields.keys() - {
        "webhook",
        "job_ids",
    }


def test_the_readmes_job_record_shows_and_names_every_public_field():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### The job record") : readme.index("### Webhooks")]
    example = json.loads(section[section.index("```json") + 7 : section.index("```\n\n|")])
    assert example.keys() == PublicJob.model_fields.keys()
    table = {n for row in section.splitlines() if row.startswith("| `")
             for n in re.findall(r"`(\w+)`", row.split(" | ")[0])}  # fmt: skip
    assert table == PublicJob.model_fields.keys()
