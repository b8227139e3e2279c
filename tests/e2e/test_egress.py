"""The outbound URL policy through real services: refused at enqueue, at delivery, and on a
redirect hop; a checked name is connected to at the address that was checked."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx
import pytest

from ops.receiver import WebhookReceiver
from ops.stack import PROJECT_ROOT
from producer import InvalidRequest, JobStatus, enqueue, enqueue_batch, get, wait
from producer.core.errors import BlockedUrl
from producer.core.records import WebhookState
from producer.core.store import store
from producer.core.urls import UrlPolicy
from tests.e2e.conftest import WEBHOOK_SECRET, eventually
from worker.egress import GuardedTransport

SPELLINGS = [
    "http://127.1:9/h", "http://0x7f000001/h", "http://2130706433/h",
    "http://[::ffff:127.0.0.1]/h", "http://localhost:6379/", "http://169.254.169.254/",
    "http://[2002:7f00:1::]:6379/", "http://[fec0::1]/h",
]  # fmt: skip


@pytest.mark.parametrize("url", SPELLINGS)
def test_a_webhook_url_with_a_refused_address_is_refused_at_enqueue(make_pipeline, url):
    p = make_pipeline(workers=0, env={"VIDEOQUEUE_URL_ALLOWLIST": ""})
    client = store(p.settings).redis
    with pytest.raises(InvalidRequest) as e:
        enqueue(p.request(webhook_url=url), settings=p.settings)
    assert e.value.errors[0]["field"] == "webhook_url"
    with pytest.raises(InvalidRequest) as e:
        enqueue_batch([p.request(webhook_url=None), p.request(webhook_url=url)],
                      settings=p.settings)  # fmt: skip
    assert {(x["index"], x["field"]) for x in e.value.errors} == {(1, "webhook_url")}
    assert list(client.scan_iter(f"{p.settings.key_prefix}*")) == []


def test_the_cli_refuses_a_private_webhook_url_with_exit_code_2(make_pipeline):
    p = make_pipeline(workers=0, env={"VIDEOQUEUE_URL_ALLOWLIST": ""})
    cli = os.path.join(os.path.dirname(sys.executable), "videoqueue")
    request = json.dumps(p.request(webhook_url="http://10.1.2.3/hook"))
    done = subprocess.run([cli, "submit", "-"], input=request, capture_output=True, text=True,
                          env={**os.environ, **p.env, "PYTHONPATH": str(PROJECT_ROOT)})  # fmt: skip
    assert done.returncode == 2 and "webhook_url" in done.stderr


def test_a_webhook_to_a_name_that_resolves_to_loopback_is_refused_at_delivery(make_pipeline):
    host = socket.gethostname()
    assert socket.gethostbyname(host).startswith("127."), "this machine's name is loopback"
    p = make_pipeline(env={"VIDEOQUEUE_URL_ALLOWLIST": ""})
    port = httpx.URL(p.receiver.url).port
    job_id = enqueue(p.request(webhook_url=f"http://{host}:{port}/hook"), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.COMPLETED, record.error
    record = eventually(lambda: (r := get(job_id, settings=p.settings)).webhook.state
                        is WebhookState.DEAD and r, 20)  # fmt: skip
    assert record.webhook.attempts == 1 and "blocked_url" in record.webhook.last_error
    assert p.receiver.deliveries == []  # nothing was sent to it


def test_a_redirect_to_a_refused_address_fails_the_job_as_blocked_url(make_pipeline):
    p = make_pipeline(sandbox={"cdn_base_url": "http://127.0.0.2:1"},
                      env={"VIDEOQUEUE_URL_ALLOWLIST": "127.0.0.1/32"})  # fmt: skip
    job_id = enqueue(p.request(), settings=p.settings)
    record = wait(job_id, 60, settings=p.settings)
    assert record.status is JobStatus.FAILED and record.error.code == "blocked_url"
    assert "127.0.0.2" in record.error.message and "sig=" not in record.error.message
    p.receiver.wait_for(lambda d: d.verified, timeout_s=20)  # its webhook still arrives


def _rebinding(address: str):
    def resolve(host, port, **_):
        if ":" in address:
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    return resolve


def test_a_name_is_connected_to_at_the_address_that_was_checked():
    receiver = WebhookReceiver(WEBHOOK_SECRET)
    with receiver.serve() as url:
        port = httpx.URL(url).port
        refused = GuardedTransport(UrlPolicy(), resolve=_rebinding("127.0.0.1"))
        with httpx.Client(transport=refused) as client, pytest.raises(BlockedUrl):
            client.post(f"http://rebind.test:{port}/hook", content=b"{}")
        assert receiver.deliveries == []
        allowed = GuardedTransport(UrlPolicy(["127.0.0.1/32"]), resolve=_rebinding("127.0.0.1"))
        with httpx.Client(transport=allowed) as client:
            client.post(f"http://rebind.test:{port}/hook", content=b"{}")
        (delivery,) = receiver.deliveries
        assert delivery.headers["host"] == f"rebind.test:{port}"


@pytest.mark.parametrize("address", ["2002:7f00:1::", "fec0::1", "64:ff9b::7f00:1"])
def test_a_name_that_resolves_to_a_6to4_nat64_or_site_local_address_is_refused(address):
    receiver = WebhookReceiver(WEBHOOK_SECRET)
    with receiver.serve() as url:
        port = httpx.URL(url).port
        transport = GuardedTransport(UrlPolicy(), resolve=_rebinding(address))
        with httpx.Client(transport=transport) as client, pytest.raises(BlockedUrl) as e:
            client.post(f"http://rebind.test:{port}/hook", content=b"{}")
        assert address in str(e.value) or "127.0.0.1" in str(e.value)
        assert receiver.deliveries == []
