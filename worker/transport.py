"""Celery's Redis transport, made to survive Redis going away under running steps.

When Redis itself goes away (a restart, a failover), Celery closes the broker connection to
open a new one, and kombu's channel close first tries to put the messages this worker still
holds back on their queues, through that same connection. Under load that path finds the
connection already detached and raises AttributeError ('NoneType' object has no attribute
'hostname'), which Celery treats as unrecoverable: the worker exits (seen in the chaos
suite's Redis restart; the same path as celery/kombu#582 and #970). Without the restore, a
step that finishes after the reconnect acknowledges its message through the closed channel
and meets the same fate. Neither is needed: a message left unacknowledged stays in kombu's
unacked hash, which any worker restores after the visibility timeout, and the job it names
comes back long before that by its lease in the durable schedule (a message is a hint, the
schedule is the truth).

A failover under Redis Sentinel is the same event seen from here (the connection to the old
primary dies), so the Sentinel transport below gets the same two fixes.

A primary left without replicas under `min-replicas-to-write` stays up and refuses every write
with NOREPLICAS, and BRPOP, a pop, is a write: kombu raises the refusal from its event loop,
and Celery, taking it as unrecoverable, exits (every worker at once, seen in the failover
suite's replicas-stopped test). So both channels wait REFUSED_PAUSE_S after a refused BRPOP
and ask again, and a refused acknowledgement is settled here like one through a closed
channel: what the step did is in the schedule already, the message is only a hint.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

import redis
import structlog
from kombu.transport import redis as kombu_redis
from redis import sentinel

from producer.core.errors import NotEnoughReplicas
from producer.core.redis_client import PrimaryCheckingPool, RefusalParser

log = structlog.get_logger("videoqueue.worker")

# How long a channel whose BRPOP was refused (NOREPLICAS) waits before it asks again: the
# refusal comes back at once, and asking without a pause would spin the event loop on it.
REFUSED_PAUSE_S = 1.0


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """A message delivered through a channel that has since closed (its connection lost and
    replaced while the step ran) is settled here, not in Redis: kombu would reach Redis
    through the dead channel and raise AttributeError, which Celery takes as unrecoverable.
    The message stays in the unacked hash; restored after the visibility timeout, it finds
    its claim superseded and does nothing."""

    def ack(self, delivery_tag: str) -> None:
        if self.channel.closed:
            self._quick_ack(delivery_tag)
            return
        try:
            super().ack(delivery_tag)
        except NotEnoughReplicas:  # kept in the unacked hash, as above
            log.warning("broker refused an acknowledgement (NOREPLICAS)")
            self._quick_ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self.channel.closed:
            self._quick_ack(delivery_tag)
            return
        try:
            super().reject(delivery_tag, requeue)
        except NotEnoughReplicas:
            log.warning("broker refused a rejection (NOREPLICAS)")
            self._quick_ack(delivery_tag)


class _PausesWhenRefused:
    """What both channels add to kombu's: NOREPLICAS answered as NotEnoughReplicas, and a
    refused BRPOP paused for REFUSED_PAUSE_S instead of raised (see the module's docstring)."""

    _refused_until = 0.0

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = super()._connparams(asynchronous)  # type: ignore[misc]
        params["parser_class"] = RefusalParser
        return params

    def _brpop_start(self, timeout: int | None = None) -> None:
        # Skipped, the poller sends it again on a later turn of the event loop.
        if time.monotonic() >= self._refused_until:
            super()._brpop_start(timeout)  # type: ignore[misc]

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]
        except NotEnoughReplicas:
            self._refused_until = time.monotonic() + REFUSED_PAUSE_S
            log.warning("broker refused a pop (NOREPLICAS): asking again shortly")
            raise Empty() from None


class Channel(_PausesWhenRefused, kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS
    do_restore = False


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelChannel(_PausesWhenRefused, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """kombu's Sentinel channel with the fixes above, reading its sentinels from the
    `sentinels` transport option.

    kombu reads them from the broker URL's ';'-separated addresses, and treats those as
    alternate brokers as well: on a connection error it switches to the next one, and a
    switch re-reads the transport from the URL's scheme, putting kombu's own Sentinel
    transport (without the fixes) in place of this one, in the middle of a failover. So the
    broker URL Celery is given names one sentinel (worker/config.py), and every sentinel is
    asked for the primary from here.
    """

    QoS = QoS
    do_restore = False
    # kombu's own is typed as a tuple of its fixed size: one more name is not an error.
    from_transport_options = (  # type: ignore[assignment]
        *kombu_redis.SentinelChannel.from_transport_options,
        "sentinels",
    )
    sentinels: list[list[Any]] = []  # [host, port] each (worker/config.py)

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        params = self._connparams(asynchronous)
        host, port = params.pop("host"), params.pop("port")
        master_name = getattr(self, "master_name", None)
        if master_name is None:
            raise ValueError("'master_name' transport option must be specified.")
        manager = sentinel.Sentinel(
            [(str(h), int(p)) for h, p in self.sentinels] or [(host, port)],
            min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=getattr(self, "sentinel_kwargs", None),
            **params,
        )
        # Kept, as kombu does, so that closing the channel closes its sentinel connections.
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        credentials = {k: params[k] for k in ("username", "password") if k in params}
        return manager.master_for(
            master_name, redis.Redis, connection_pool_class=PrimaryCheckingPool, **credentials
        ).connection_pool


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel


# The schemes Transport stands in for (kombu maps both to its Redis transport).
SCHEMES = frozenset({"redis", "rediss"})
