"""Webhooks are signed so that the standardwebhooks reference library verifies them."""

import base64
import hashlib
import json
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from producer import WebhookVerificationError, verify_webhook
from worker.webhooks import message_id, signed_headers

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def test_signature_verifies_with_the_reference_library_and_ours():
    body = json.dumps({"type": "video.completed", "data": {"id": "job_1"}})
    headers = signed_headers(SECRET, "msg_1", body, datetime.now(UTC))
    Webhook(SECRET).verify(body, headers)
    assert verify_webhook(body.encode(), headers, SECRET)["data"]["id"] == "job_1"


def test_a_tampered_body_or_wrong_secret_does_not_verify():
    body = json.dumps({"type": "video.completed"})
    headers = signed_headers(SECRET, "msg_1", body, datetime.now(UTC))
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body.replace("completed", "failed"), headers, SECRET)
    other = "whsec_" + base64.b64encode(b"z" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, other)


def test_the_message_id_is_stable_per_event_and_differs_between_events():
    assert message_id("job_1", "video.completed") == message_id("job_1", "video.completed")
    assert message_id("job_1", "video.completed") != message_id("job_1", "video.failed")
    assert message_id("job_1", "video.completed") != message_id("job_2", "video.completed")


def test_each_run_of_a_job_has_its_own_message_id_and_the_first_keeps_the_old_one():
    """A job run again by `videoqueue retry` ends in a new event; its first run's id is the
    one ids always were (deliveries in flight across an upgrade keep theirs)."""
    first = message_id("job_1", "video.failed")
    assert message_id("job_1", "video.failed", 0) == first
    assert first == "msg_" + hashlib.sha256(b"job_1:video.failed").hexdigest()[:32]
    runs = {message_id("job_1", "video.failed", n) for n in range(3)}
    assert len(runs) == 3
