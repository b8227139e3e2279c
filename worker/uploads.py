"""Orphaned multipart uploads: aborted, so a worker killed mid-upload leaves no parts behind;
and stale reference images (input_reference files), deleted.

A finalize step aborts its own upload on any failure it lives to see (worker/storage.py); a
SIGKILL, an OOM kill or a lost host leaves the upload open, and its parts are stored (and
billed) for ever. Two remedies, both under our key prefix only:

- a bucket lifecycle rule, AbortIncompleteMultipartUpload after a day, added beside any rules
  the bucket has where the server takes one (S3, MinIO, SeaweedFS >= 4 accept it);
- a sweep, for servers that keep the rule without acting on it or refuse it: at most once per
  `step_timeout_s` across the deployment (a Redis marker elects the sweeper), any upload
  initiated more than `step_timeout_s + lease_s` ago is aborted. No live step is that old:
  Celery's hard time limit ends a step at `step_timeout_s`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from producer.core.settings import Settings

log = structlog.get_logger(__name__)

RULE_ID = "videoqueue-abort-incomplete-uploads"


def key_prefix(template: str) -> str:
    """The fixed start of every object key the template makes ("videos/{job_id}.mp4" ->
    "videos/"): the part of the bucket that is ours to sweep."""
    return template.split("{", 1)[0]


def ensure_abort_rule(client: Any, bucket: str, prefix: str) -> bool:
    """Add the abort-incomplete-uploads rule to the bucket's lifecycle, keeping its other
    rules; False when the server has no lifecycle support (the sweep is then the remedy)."""
    try:
        try:
            rules = client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        if any(rule.get("ID") == RULE_ID for rule in rules):
            return True
        rule = {"ID": RULE_ID, "Status": "Enabled", "Filter": {"Prefix": prefix},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}  # fmt: skip
        client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [*rules, rule]}
        )
        return True
    except (ClientError, BotoCoreError) as e:
        log.info("no lifecycle rule for orphaned uploads; sweeping instead", reason=str(e)[:200])
        return False


def abort_stale_uploads(client: Any, bucket: str, prefix: str, older_than_s: float) -> int:
    """Abort every multipart upload under prefix initiated more than older_than_s ago."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    aborted = 0
    for page in client.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Prefix=prefix
    ):
        for upload in page.get("Uploads", []):
            if upload["Initiated"] > cutoff:
                continue
            try:
                client.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted += 1
            except ClientError:
                pass  # completed or aborted meanwhile: nothing left to do
    if aborted:
        log.info("orphaned uploads aborted", count=aborted)
    return aborted


def delete_stale_inputs(client: Any, bucket: str, prefix: str, older_than_s: float) -> int:
    """Delete every stored reference image under prefix written more than older_than_s ago.

    The HTTP service stores an input_reference file before it writes the job (a crash in
    between leaves an object no job names) and names it by its sha256, so that jobs with the
    same image share it and every upload of it renews its age: one older than older_than_s
    (record_ttl_s) was last uploaded for a job whose record has expired by now, or for none.
    """
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    stale = [
        {"Key": item["Key"]}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
        if item["LastModified"] <= cutoff
    ]
    for start in range(0, len(stale), 1000):  # DeleteObjects takes 1000 keys at most
        client.delete_objects(Bucket=bucket, Delete={"Objects": stale[start : start + 1000]})
    if stale:
        log.info("stale reference images deleted", count=len(stale))
    return len(stale)


def sweep_if_due(client: Any, redis_client: redis.Redis, marker: str, settings: Settings) -> int:
    """Sweep stale uploads (and stale reference images) if no worker of the deployment did
    within step_timeout_s; returns how many uploads and images it removed."""
    s = settings
    if not redis_client.set(marker, "1", nx=True, ex=max(1, int(s.step_timeout_s))):
        return 0
    try:
        prefix = key_prefix(s.s3_key_template)
        aborted = abort_stale_uploads(client, s.s3_bucket, prefix, s.step_timeout_s + s.lease_s)
        return aborted + delete_stale_inputs(client, s.s3_bucket, s.s3_input_prefix,
                                             s.record_ttl_s)  # fmt: skip
    except (ClientError, BotoCoreError) as e:
        log.warning("sweeping orphaned uploads failed", reason=str(e)[:200])
        return 0
