"""Redis addresses and clients: the one place a Redis client is made from the settings.

`VIDEOQUEUE_BROKER_URL` (and `VIDEOQUEUE_REDIS_URL`) name a Redis either directly
(`redis://`, `rediss://`, `unix://`) or through Redis Sentinel, as kombu spells it:
`sentinel://[user:password@]host:port[/db];sentinel://host:port;...`, one address per
sentinel, with the master's name in `VIDEOQUEUE_SENTINEL_MASTER`. A Sentinel client asks the
sentinels where the primary is each time it opens a connection, so after a failover the
next command (redis-py retries a failed one with backoff) reaches the new primary without a
restart; and once a second besides (`PrimaryCheckingPool`), so that pooled connections leave
a primary demoted while still up; a connection still open to a demoted primary is dropped on
its first READONLY answer. The user and password of a sentinel URL are the Redis servers'
(as kombu reads them); the sentinels' own password is `VIDEOQUEUE_SENTINEL_PASSWORD`.

Nothing here ever puts a password in a message: errors name the setting and the position of
the bad address, and `describe()` gives an address to print.
"""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.connection import DefaultParser
from redis.sentinel import Sentinel, SentinelConnectionPool

from producer.core.errors import InvalidConfiguration, NotEnoughReplicas

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379
# How often a Sentinel client asks the sentinels which server is the primary, besides when it
# opens a connection. redis-py asks only then, so pooled connections stay with a primary that
# was demoted while still up (a planned `SENTINEL FAILOVER`, or a primary cut off from the
# sentinels but not from us): it takes their writes until the sentinels turn it into a
# replica, about 7 s later in the chaos suite's redis-switchover, and its resync from the new
# primary then throws them away (every webhook of a 150-job run landed twice: the steps that
# sent them were recorded on the old primary only). Once a second bounds that window to about
# a second, for one round trip to a sentinel per second per process.
PRIMARY_CHECK_S = 1.0


class PrimaryCheckingPool(SentinelConnectionPool):  # type: ignore[misc]
    """redis-py's Sentinel pool, which also asks the sentinels for the primary when a
    connection is taken and PRIMARY_CHECK_S passed since it last asked. On a new primary
    redis-py drops the idle connections at once, and those in use when they come back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._primary_checked_at = time.monotonic()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if self.is_master and now - self._primary_checked_at >= PRIMARY_CHECK_S:
            self._primary_checked_at = now
            # Sentinels out of reach: carry on with the connections there are (a command on
            # a dead one fails and is retried on a fresh one, which asks them again).
            with suppress(redis.RedisError):
                self.get_master_address()
        return super().get_connection(*args, **kwargs)


class RefusalParser(DefaultParser):  # type: ignore[misc,valid-type]
    """redis-py's parser, which answers a NOREPLICAS refusal (a primary with fewer replicas
    than its min-replicas-to-write) with NotEnoughReplicas instead of a bare ResponseError
    that only quotes Redis: a caller of enqueue() learns what happened and that it may try
    again."""

    EXCEPTION_CLASSES = {**DefaultParser.EXCEPTION_CLASSES, "NOREPLICAS": NotEnoughReplicas}


@dataclass(frozen=True)
class SentinelAddress:
    """A Redis reached through its sentinels.

    Attributes:
        sentinels: (host, port) of each sentinel, in the URL's order.
        db: the database number.
        username: the Redis servers' user (ACL), if the URL names one.
        password: the Redis servers' password, if the URL gives one (a secret).
    """

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never the password, whoever prints it
        return f"SentinelAddress({describe_sentinels(self.sentinels, self.db)})"


def is_sentinel(url: str) -> bool:
    """The URL names a Redis through Sentinel."""
    return url.strip().lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str, setting: str = "VIDEOQUEUE_BROKER_URL") -> SentinelAddress:
    """The sentinels, database and credentials of a `sentinel://...;sentinel://...` URL.

    Args:
        url: the setting's value.
        setting: the environment variable it came from, named in every error.

    Raises:
        InvalidConfiguration: naming the setting and which address is wrong (never the URL,
            which may carry a password).
    """
    parts = [p.strip() for p in url.strip().split(";")]
    if not any(parts):
        raise InvalidConfiguration(f"{setting}: no sentinel address")
    sentinels: list[tuple[str, int]] = []
    dbs: set[int] = set()
    username = password = None
    for n, part in enumerate(parts, start=1):
        where = f"{setting}: sentinel address {n} of {len(parts)}"
        if not part:
            raise InvalidConfiguration(f"{where} is empty (a stray ';'?)")
        if not is_sentinel(part):
            raise InvalidConfiguration(
                f"{where} does not start with sentinel:// (write every address as "
                "sentinel://host:port, separated by ';')"
            )
        try:
            split = urlsplit(part)
            host, port = split.hostname, split.port
        except ValueError:
            raise InvalidConfiguration(f"{where} has a port that is not a number") from None
        if not host:
            raise InvalidConfiguration(f"{where} has no host")
        if split.query or split.fragment:
            raise InvalidConfiguration(f"{where} has a query or fragment; nothing is read there")
        path = split.path.strip("/")
        if path:
            if not path.isdigit():
                raise InvalidConfiguration(f"{where}: the database must be a number (/0)")
            dbs.add(int(path))
        if split.password is not None or split.username:
            username = username or (unquote(split.username) if split.username else None)
            password = password or (unquote(split.password) if split.password is not None else None)
        sentinels.append((host, port or DEFAULT_SENTINEL_PORT))
    if len(dbs) > 1:
        raise InvalidConfiguration(f"{setting}: the sentinel addresses name different databases")
    return SentinelAddress(tuple(sentinels), dbs.pop() if dbs else 0, username, password)


# The schemes redis-py connects to (redis.connection.parse_url), and Sentinel's of ours.
REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_url(url: str, setting: str) -> None:
    """Refuse a URL that names no Redis: a scheme redis-py does not take, or a Sentinel URL
    that does not parse. Checked with the settings, so that every command and process stops
    at once with a line naming the setting, not at its first connection with a traceback.

    Raises:
        InvalidConfiguration: naming the setting (never the URL: it may carry a password).
    """
    if is_sentinel(url):
        parse_sentinel_url(url, setting)
        return
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        raise InvalidConfiguration(
            f"{setting} must be a redis://, rediss://, unix:// or sentinel:// URL"
        )


def describe_sentinels(sentinels: tuple[tuple[str, int], ...], db: int = 0) -> str:
    hosts = ",".join(f"{h}:{p}" for h, p in sentinels)
    return f"sentinel://{hosts}/{db}"


def describe(url: str, master: str | None = None) -> str:
    """The address to print: scheme, hosts, ports and database, never a user or password
    (and for Sentinel, the master's name if given)."""
    if is_sentinel(url):
        try:
            address = parse_sentinel_url(url)
        except InvalidConfiguration:
            return "sentinel://(invalid)"
        return describe_sentinels(address.sentinels, address.db) + (
            f" (master {master})" if master else ""
        )
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{url.split('://', 1)[0]}://(invalid)"
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def url_secrets(url: str) -> list[str]:
    """The passwords a Redis URL carries (each sentinel address may carry its own)."""
    found = []
    for part in url.split(";"):
        try:
            password = urlsplit(part.strip()).password
        except ValueError:
            continue
        if password:
            found += [password, unquote(password)]
    return found


# A sentinel that hangs (its machine gone without a reset) must not hold up the search for
# the primary: the next sentinel is asked after this long.
SENTINEL_TIMEOUT_S = 2.0


def sentinel_kwargs(password: str | None, **connection_kwargs: Any) -> dict[str, Any]:
    """The arguments of connections to the sentinels themselves: their password, and the
    Redis servers' socket options (what redis-py does when given none), a timeout at least."""
    found: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
    }
    found.update({k: v for k, v in connection_kwargs.items() if k.startswith("socket_")})
    if password:
        found["password"] = password
    return found


def connect(
    url: str,
    *,
    master: str = "mymaster",
    sentinel_password: str | None = None,
    setting: str = "VIDEOQUEUE_BROKER_URL",
    **kwargs: Any,
) -> redis.Redis:
    """A Redis client for url: direct, or the current primary of a Sentinel-monitored master.

    Args:
        url: a redis://, rediss://, unix:// or sentinel://...;sentinel://... URL.
        master: the master's name the sentinels monitor (VIDEOQUEUE_SENTINEL_MASTER).
        sentinel_password: the sentinels' own password (VIDEOQUEUE_SENTINEL_PASSWORD).
        setting: the setting url came from, named in errors.
        **kwargs: more connection arguments (socket timeouts...).

    Raises:
        InvalidConfiguration: a Sentinel URL that does not parse.
    """
    kwargs.setdefault("parser_class", RefusalParser)
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    address = parse_sentinel_url(url, setting)
    manager = Sentinel(
        list(address.sentinels),
        sentinel_kwargs=sentinel_kwargs(sentinel_password, **kwargs),
        **kwargs,
    )
    return manager.master_for(
        master,
        redis_class=redis.Redis,
        connection_pool_class=PrimaryCheckingPool,
        db=address.db,
        username=address.username,
        password=address.password,
    )


def client(settings: Any, url: str | None = None, **kwargs: Any) -> redis.Redis:
    """The client for the records' Redis (or url, one of the settings' URLs) of these settings.

    Args:
        settings: a Settings (typed Any: settings.py imports this module).
        url: settings.broker_url to reach the broker's Redis; the records' by default.
        **kwargs: more connection arguments (VIDEOQUEUE_REDIS_TIMEOUT_S gives the socket
            timeouts not given here).
    """
    target = url or settings.records_url
    setting = (
        "VIDEOQUEUE_REDIS_URL"
        if settings.redis_url and target == settings.redis_url
        else "VIDEOQUEUE_BROKER_URL"
    )
    password = settings.sentinel_password
    if settings.redis_timeout_s is not None:
        kwargs.setdefault("socket_timeout", settings.redis_timeout_s)
        kwargs.setdefault("socket_connect_timeout", settings.redis_timeout_s)
    return connect(
        target,
        master=settings.sentinel_master,
        sentinel_password=password.get_secret_value() if password else None,
        setting=setting,
        **kwargs,
    )
