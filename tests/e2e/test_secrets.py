"""No secret and no signed URL in any log line (httpx's included), record, webhook, exception
or S3 metadata, for a job that downloads from a signed file URL and one whose download
fails, both with a webhook URL carrying a token."""

from __future__ import annotations

import json

from producer import JobStatus, enqueue, wait
from producer.core.store import store
from tests.e2e.conftest import API_KEY, BUCKET, WEBHOOK_SECRET, eventually

HOOK_TOKEN = "hook-token-5ecret"


def test_no_secret_or_signed_url_reaches_logs_records_webhooks_or_metadata(
    make_pipeline, s3_client
):
    # The unified format hands out signed file URLs (?exp=...&sig=...); the first copy of
    # the second job's file is cut short, so its failure is logged and retried too.
    p = make_pipeline(env={"VIDEOQUEUE_API_FORMAT": "unified"})
    hook = f"{p.receiver.url}?token={HOOK_TOKEN}"
    done = enqueue(p.request(webhook_url=hook), settings=p.settings)
    assert wait(done, 60, settings=p.settings).status is JobStatus.COMPLETED
    p.sandbox.configure(truncate_rate=1.0)
    failed = enqueue(p.request(webhook_url=hook), settings=p.settings)
    assert wait(failed, 90, settings=p.settings).status is JobStatus.FAILED
    eventually(lambda: len(p.receiver.deliveries) >= 2, 30)

    st = store(p.settings)
    records = [st.redis.get(st.keys.job(j)).decode() for j in (done, failed)]
    bodies = [d.body.decode() for d in p.receiver.deliveries]
    metadata = s3_client.head_object(Bucket=BUCKET, Key=f"videos/{done}.mp4")["Metadata"]
    log = "".join(w.log_text() for w in p.workers)
    # The log is the workers' real output about both jobs (httpx's own request lines are
    # silenced below WARNING: worker/logs.py).
    assert done in log and failed in log
    places = {"log": log, "records": "".join(records), "webhooks": "".join(bodies),
              "metadata": json.dumps(metadata)}  # fmt: skip
    for where, text in places.items():
        for secret in (API_KEY, WEBHOOK_SECRET, "sig="):
            assert secret not in text, (where, secret)
    # The caller's own webhook URL is part of its request, which records and webhooks echo;
    # no log line shows its token.
    assert HOOK_TOKEN not in log
