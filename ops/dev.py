"""`videoqueue dev`: the whole stack on this machine, kept running until Ctrl-C.

Redis (the machine's, or a private one), SeaweedFS as S3, the sandbox provider, a Celery
worker, the HTTP API (producer/http/) and a webhook receiver that prints each event as it
arrives; then a fresh API key of one tenant, the environment to export and a curl line, so
that a newcomer tries the API with curl or their own SDK a minute after cloning.

Everything it starts is stopped on Ctrl-C or SIGTERM (the services are context managers that
reap their process groups), and the keys it wrote in Redis go with it.

    videoqueue dev [--port 8080] [--tenant default]
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from ops.receiver import Delivery, WebhookReceiver
from ops.sandbox import Sandbox, SandboxConfig
from ops.serve import free_port, serve_in_thread
from ops.stack import LocalStack, StackError, celery_worker, local_stack
from producer.core.keys import create_key
from producer.core.settings import Settings
from producer.http.app import create_app

__all__ = ["DevStack", "dev_stack", "forget_deployment", "main", "pipeline_env", "port_taken"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# What a newcomer's first curl asks for: the sandbox makes it in a few seconds.
EXAMPLE_REQUEST = {"model": "sora", "prompt": "A cat playing piano in a jazz club",
                   "size": "640x360", "seconds": "4"}  # fmt: skip
# Half the sandbox's generation times: a first video in seconds, still with a queued phase.
SANDBOX_TIME_SCALE = 0.5


def pipeline_env(
    local: LocalStack, *, prefix: str, provider_url: str, provider_key: str, webhook_secret: str
) -> dict[str, str]:
    """The settings of a deployment of its own (key prefix and queue) on a local stack, with
    the sandbox as its provider and fast polling; what its worker and its producers share."""
    return {
        **local.env,
        "VIDEOQUEUE_KEY_PREFIX": prefix,
        "VIDEOQUEUE_QUEUE": prefix,
        "VIDEOQUEUE_API_BASE_URL": provider_url,
        "VIDEOQUEUE_API_KEY": provider_key,
        "VIDEOQUEUE_WEBHOOK_SECRET": webhook_secret,
        # The local receiver is on loopback, which workers refuse unless told.
        "VIDEOQUEUE_URL_ALLOWLIST": "127.0.0.0/8",
        "VIDEOQUEUE_POLL_FIRST_S": "1",
        "VIDEOQUEUE_POLL_CAP_S": "5",
    }


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port (where the API would)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def forget_deployment(broker_url: str, prefix: str) -> int:
    """Delete every key of the deployment (its prefix, and kombu's keys naming its queue):
    the machine's Redis is left as it was found. Returns how many went."""
    client = redis.Redis.from_url(broker_url)
    try:
        doomed = {*client.scan_iter(f"{prefix}*"), *client.scan_iter(f"_kombu*{prefix}*")}
        for key in doomed:
            client.delete(key)
        return len(doomed)
    finally:
        client.close()


@dataclass(frozen=True)
class DevStack:
    """What `videoqueue dev` runs, and how to reach it.

    Attributes:
        api_url: The HTTP API's base URL.
        hook_url: The webhook receiver's URL (give it as a job's webhook_url).
        provider_url: The sandbox provider's base URL.
        local: Redis and S3.
        env: The deployment's VIDEOQUEUE_* settings (and S3's), as the worker has them.
        tenant: The tenant of `key`.
        key: A fresh API key of that tenant (its secret).
        workdir: Where the logs and S3's data are.
    """

    api_url: str
    hook_url: str
    provider_url: str
    local: LocalStack
    env: dict[str, str]
    tenant: str
    key: str
    workdir: Path

    @property
    def prefix(self) -> str:
        """The deployment's Redis key prefix (and queue name)."""
        return self.env["VIDEOQUEUE_KEY_PREFIX"]


def _print(text: str = "") -> None:
    # flush: the banner and each webhook must reach a pipe (a test, `| tee`) as they happen.
    print(text, flush=True)


def _print_delivery(delivery: Delivery) -> None:
    event: dict[str, Any] = delivery.json if isinstance(delivery.json, dict) else {}
    data: dict[str, Any] = event["data"] if isinstance(event.get("data"), dict) else {}
    verdict = {True: "signature verified", False: "BAD SIGNATURE", None: "unsigned"}
    when = time.strftime("%H:%M:%S", time.localtime(delivery.received_at))
    _print(
        f"[webhook {when}] {event.get('type', '?')} {data.get('id', '?')} "
        f"status={data.get('status', '?')} ({verdict[delivery.verified]})"
    )


@contextmanager
def dev_stack(
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tenant: str = "default",
    redis_url: str | None = DEFAULT_REDIS_URL,
    concurrency: int = 2,
) -> Iterator[DevStack]:
    """Run the local stack, a worker, the HTTP API and a printing webhook receiver.

    Args:
        workdir: Logs (worker.log, redis/, seaweedfs/) and S3's data.
        host: Where the API listens.
        port: The API's port; 0 for a free one.
        tenant: The tenant of the key made for the caller.
        redis_url: The Redis to use, or to start on its port if none answers there; None
            runs a private one on a free port.
        concurrency: The worker's pool size.

    Yields:
        The DevStack, every part answering.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    provider_key = "sk-dev-" + secrets.token_hex(8)
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    prefix = f"videoqueue-dev-{secrets.token_hex(4)}"
    port = port or free_port(host)
    api_url = f"http://{host}:{port}"
    with ExitStack() as stack:
        local = stack.enter_context(local_stack(workdir, redis_url=redis_url))
        stack.callback(forget_deployment, local.broker_url, prefix)
        sandbox = Sandbox(
            SandboxConfig(flavor="router", api_key=provider_key, time_scale=SANDBOX_TIME_SCALE)
        )
        provider_url = stack.enter_context(sandbox.serve(host="127.0.0.1", port=0))
        receiver = WebhookReceiver(webhook_secret)
        receiver.on_delivery = _print_delivery
        hook_url = stack.enter_context(receiver.serve())
        env = pipeline_env(
            local, prefix=prefix, provider_url=provider_url, provider_key=provider_key,
            webhook_secret=webhook_secret,
        )  # fmt: skip
        # video.url signed, so that `curl -o video.mp4 URL` fetches it without the key.
        env["VIDEOQUEUE_HTTP_URL_SECRET"] = secrets.token_urlsafe(32)
        env["VIDEOQUEUE_HTTP_PUBLIC_URL"] = api_url
        stack.enter_context(
            celery_worker(env, concurrency=concurrency, logfile=workdir / "worker.log",
                          name=f"dev-{prefix[-8:]}")
        )  # fmt: skip
        # In this process's environment too: the API's S3 client (video downloads) takes its
        # credentials from it, as boto3 does in a deployment.
        os.environ.update(env)
        settings = Settings()
        stack.enter_context(serve_in_thread(create_app(settings), host, port))
        _, key = create_key(tenant, settings=settings)
        yield DevStack(
            api_url=api_url, hook_url=hook_url, provider_url=provider_url, local=local,
            env=env, tenant=tenant, key=key, workdir=workdir,
        )  # fmt: skip


# What a producer on this stack exports: no credential among them (the provider key, the
# webhook secret, S3's keys and the URL secret stay in the worker's environment).
_EXPORTED = ("VIDEOQUEUE_BROKER_URL", "VIDEOQUEUE_KEY_PREFIX", "VIDEOQUEUE_QUEUE",
             "VIDEOQUEUE_S3_BUCKET", "VIDEOQUEUE_S3_ENDPOINT_URL",
             "VIDEOQUEUE_URL_ALLOWLIST")  # fmt: skip


def banner(dev: DevStack) -> str:
    """What `videoqueue dev` prints once everything answers."""
    body = {**EXAMPLE_REQUEST, "webhook_url": dev.hook_url}
    curl = (
        f"curl -s {dev.api_url}/v1/videos -H {shlex.quote('Authorization: Bearer ' + dev.key)} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"
    )
    exports = "\n".join(f"  export {n}={shlex.quote(dev.env[n])}" for n in _EXPORTED)
    return f"""\
videoqueue dev: everything is up. Ctrl-C stops it all.

  api       {dev.api_url}   (docs: {dev.api_url}/docs)
  console   {dev.api_url}/console   (sign in with the key below)
  webhooks  {dev.hook_url}   (each event is printed below as it arrives)
  provider  {dev.provider_url}   (the sandbox)
  redis     {dev.local.broker_url}   (keys under {dev.prefix}, removed on exit)
  s3        {dev.local.s3.endpoint_url}   bucket {dev.local.bucket}
  logs      {dev.workdir}

  tenant    {dev.tenant}
  key       {dev.key}

Try it (then GET {dev.api_url}/v1/videos/ID with the same header, and /content for the MP4):
  {curl}

OpenAI's SDK, or any HTTP client:
  export OPENAI_BASE_URL={dev.api_url}/v1
  export OPENAI_API_KEY={dev.key}

The videoqueue command and Python producers, on this stack:
{exports}
"""


class _Stop(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM: unwinds every service's block."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # Once only: a second Ctrl-C during the shutdown must not cut it short and leave
    # SeaweedFS or the worker running.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop(signal.Signals(signum).name)


def main(
    workdir: Path, *, host: str = "127.0.0.1", port: int = 0, tenant: str = "default",
    redis_url: str | None = DEFAULT_REDIS_URL,
) -> int:  # fmt: skip
    """Run `videoqueue dev` until SIGINT or SIGTERM; 0 after a clean stop."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    _print(f"videoqueue dev: starting Redis, SeaweedFS, the sandbox, a worker and the API "
           f"(logs in {workdir})…")  # fmt: skip
    try:
        with dev_stack(workdir, host=host, port=port, tenant=tenant, redis_url=redis_url) as dev:
            _print(banner(dev))
            while True:
                time.sleep(3600)
    except _Stop as stop:
        _print(f"videoqueue dev: {stop}: everything stopped.")
        return 0
    except StackError as e:
        # A service that would not start (its log's tail is in the message); the ones that
        # did were stopped on the way out.
        print(f"videoqueue dev: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main(Path(".stack/dev").resolve()))
