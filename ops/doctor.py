"""`videoqueue doctor`: is this deployment configured safely? Each check says ok, or the
problem and how to fix it."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis

from producer.core import redis_client
from producer.core.errors import InvalidConfiguration
from producer.core.providers import api_key, providers
from producer.core.settings import Settings

# The largest clock difference between this host and Redis that is harmless: Redis's clock
# drives the schedule, this host's stamps the records' times.
MAX_CLOCK_SKEW_S = 1.0
# A made-up task id: asking for it costs nothing and proves the key is accepted.
_PROBE_TASK = "videoqueue-doctor-probe"


@dataclass
class Check:
    """One check's verdict."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Problem(Exception):
    """Raised by a check that failed: the problem, and its fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.fix = fix


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order; none raises."""
    checks: list[tuple[str, Callable[[Settings], str]]] = [
        ("broker Redis", _broker),
        ("records Redis", _records),
        ("Redis persistence (AOF)", _aof),
        ("Redis maxmemory-policy", _eviction),
        ("clock difference with Redis", _clock),
        ("S3 bucket", _bucket),
        ("S3 multipart-abort rule", _abort_rule),
        ("provider API key", _provider_key),
        ("webhook secret", _webhook_secret),
    ]
    results = []
    for name, check in checks:
        try:
            results.append(Check(name, True, check(settings)))
        except Problem as p:
            results.append(Check(name, False, str(p), p.fix))
        except Exception as e:  # noqa: BLE001  (a check that crashed is a failed check)
            results.append(Check(name, False, f"{type(e).__name__}: {str(e)[:200]}",
                                 "see the error above"))  # fmt: skip
    return results


def _redis(s: Settings, url: str) -> redis.Redis:
    return redis_client.client(s, url, socket_connect_timeout=3, socket_timeout=5)


def _ping(s: Settings, url: str, what: str) -> str:
    try:
        _redis(s, url).ping()
    except redis.RedisError as e:
        raise Problem(
            f"{what} at {_safe(url)} does not answer ({type(e).__name__})",
            f"start Redis there, or point VIDEOQUEUE_{what.split()[0].upper()}_URL at it",
        ) from None
    return f"{_safe(url)} answers"


def _broker(s: Settings) -> str:
    return _ping(s, s.broker_url, "broker Redis")


def _records(s: Settings) -> str:
    if s.records_url == s.broker_url:
        _ping(s, s.records_url, "records Redis")
        return "the broker's Redis (VIDEOQUEUE_REDIS_URL unset)"
    return _ping(s, s.records_url, "records Redis")


def _config(s: Settings, name: str) -> str:
    try:
        found = _redis(s, s.records_url).config_get(name)
    except redis.ResponseError as e:
        raise Problem(
            f"cannot read Redis's {name} ({e}): CONFIG is disabled here",
            f"check {name} in your Redis provider's settings",
        ) from None
    value = found.get(name)
    return value.decode() if isinstance(value, bytes) else str(value)


def _aof(s: Settings) -> str:
    if _config(s, "appendonly") != "yes":
        raise Problem(
            "append-only file is off: a Redis restart loses queued jobs and their schedule",
            "set `appendonly yes` (redis-server --appendonly yes --appendfsync everysec)",
        )
    return "appendonly yes"


def _eviction(s: Settings) -> str:
    policy = _config(s, "maxmemory-policy")
    if policy != "noeviction":
        raise Problem(
            f"maxmemory-policy is {policy}: a full Redis silently drops job records",
            "set `maxmemory-policy noeviction` (Redis then refuses writes instead)",
        )
    return "noeviction"


def _clock(s: Settings) -> str:
    client = _redis(s, s.records_url)
    before = time.time()
    seconds, micros = client.time()
    after = time.time()
    skew_s = seconds + micros / 1e6 - (before + after) / 2
    if abs(skew_s) > MAX_CLOCK_SKEW_S:
        raise Problem(
            f"this host's clock is {-skew_s:+.2f} s off Redis's",
            "run NTP (chrony, systemd-timesyncd) on this host and on Redis's",
        )
    return f"{skew_s * 1000:+.0f} ms"


def _s3(s: Settings) -> Any:
    from worker.storage import s3_client

    # A doctor should answer quickly: no long retries against a dead endpoint.
    return s3_client(s, connect_timeout=3, read_timeout=10, retries={"max_attempts": 1})


def _bucket(s: Settings) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    client = _s3(s)
    try:
        client.head_bucket(Bucket=s.s3_bucket)
    except ClientError as e:
        raise Problem(
            f"bucket {s.s3_bucket} is not there or not ours "
            f"({e.response.get('Error', {}).get('Code')})",
            f"create it (aws s3 mb s3://{s.s3_bucket}) or set VIDEOQUEUE_S3_BUCKET",
        ) from None
    except BotoCoreError as e:
        raise Problem(
            f"S3 at {s.s3_endpoint_url or 'AWS'} does not answer ({type(e).__name__})",
            "check VIDEOQUEUE_S3_ENDPOINT_URL and the network",
        ) from None
    key = f"videoqueue-doctor/{uuid.uuid4().hex}"
    try:
        client.put_object(Bucket=s.s3_bucket, Key=key, Body=b"videoqueue doctor")
        client.delete_object(Bucket=s.s3_bucket, Key=key)
    except ClientError as e:
        raise Problem(
            f"cannot write to bucket {s.s3_bucket} ({e.response.get('Error', {}).get('Code')})",
            "grant s3:PutObject and s3:DeleteObject on it to these credentials",
        ) from None
    return f"{s.s3_bucket} exists and is writable"


def _abort_rule(s: Settings) -> str:
    from botocore.exceptions import ClientError

    fix = (
        f"aws s3api put-bucket-lifecycle-configuration --bucket {s.s3_bucket} "
        '--lifecycle-configuration \'{"Rules": [{"ID": "abort-incomplete-multipart", '
        '"Status": "Enabled", "Filter": {"Prefix": ""}, '
        '"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]}\''
    )
    try:
        rules = _s3(s).get_bucket_lifecycle_configuration(Bucket=s.s3_bucket)["Rules"]
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code")
        raise Problem(
            f"bucket {s.s3_bucket} has no lifecycle rule ({code}): parts of uploads cut "
            "short by a crash are kept and billed forever",
            fix,
        ) from None
    for rule in rules:
        if rule.get("Status") == "Enabled" and "AbortIncompleteMultipartUpload" in rule:
            days = rule["AbortIncompleteMultipartUpload"].get("DaysAfterInitiation")
            return f"incomplete multipart uploads are aborted after {days} day(s)"
    raise Problem(
        f"no enabled rule of bucket {s.s3_bucket} aborts incomplete multipart uploads", fix
    )


def _provider_key(s: Settings) -> str:
    if s.providers_file is not None:
        return _providers_keys(s)
    import httpx

    from producer.core.errors import InvalidConfiguration
    from producer.core.providers import providers

    try:
        providers(s)  # VIDEOQUEUE_PRICES, read with the single provider
    except InvalidConfiguration as e:
        raise Problem(str(e), 'fix VIDEOQUEUE_PRICES (README "Budgets and the ledger")') from None

    if not s.api_key.get_secret_value():
        raise Problem("VIDEOQUEUE_API_KEY is empty", "set VIDEOQUEUE_API_KEY")
    url = f"{s.api_base_url.rstrip('/')}/v1/videos/{_PROBE_TASK}"
    try:
        response = httpx.get(
            url,
            headers={"Authorization": f"Bearer {s.api_key.get_secret_value()}"},
            timeout=s.api_timeout_s,
            follow_redirects=False,
        )
    except httpx.HTTPError as e:
        raise Problem(
            f"the API at {s.api_base_url} does not answer ({type(e).__name__})",
            "check VIDEOQUEUE_API_BASE_URL and the network",
        ) from None
    if response.status_code in (401, 403):
        raise Problem(
            f"the API refuses the key (HTTP {response.status_code})",
            "set VIDEOQUEUE_API_KEY to a valid key for this API",
        )
    if response.status_code >= 500 or response.status_code == 429:
        raise Problem(
            f"the API answered HTTP {response.status_code}: the key could not be checked",
            "try again; if it persists, the provider is down",
        )
    # A status query for a task that does not exist: 404 (or 400) once the key passed.
    return f"the API at {s.api_base_url} accepts the key"


def _providers_keys(s: Settings) -> str:
    """With a providers file: the file validates and every provider's key variable is set."""
    try:
        listed = providers(s)
    except InvalidConfiguration as e:
        raise Problem(str(e), "fix the providers file") from None
    for p in listed:
        if not api_key(p, s).get_secret_value():
            raise Problem(f"provider {p.name}: {p.api_key_env} is empty", f"set {p.api_key_env}")
    return f"{len(listed)} providers, each with its key set ({', '.join(p.name for p in listed)})"


def _webhook_secret(s: Settings) -> str:
    secret = s.webhook_secret.get_secret_value() if s.webhook_secret else ""
    fix = 'set VIDEOQUEUE_WEBHOOK_SECRET to "whsec_" + base64 of 24-64 random bytes'
    if not secret:
        raise Problem("no webhook secret: webhooks go out unsigned", fix)
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise Problem("the webhook secret after whsec_ is not base64", fix) from None
    if not 24 <= len(key) <= 64:
        raise Problem(f"the webhook secret is {len(key)} bytes; Standard Webhooks wants 24-64", fix)
    return f"whsec_ + {len(key)} bytes"


def _safe(url: str) -> str:
    """A Redis URL without its user or password (every sentinel's address for Sentinel)."""
    return redis_client.describe(url)
