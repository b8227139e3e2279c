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
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """A message delivered through a channel that has since closed (its connection lost and
    replaced while the step ran) is settled here, not in Redis: kombu would reach Redis
    through the dead channel and raise AttributeError, which Celery takes as unrecoverable.
    The message stays in the unacked hash; restored after the visibility timeout, it finds
    its claim superseded and does nothing."""

    def ack(self, delivery_tag: str) -> None:
        if self.channel.closed:
            self._quick_ack(delivery_tag)
        else:
            super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self.channel.closed:
            self._quick_ack(delivery_tag)
        else:
            super().reject(delivery_tag, requeue)


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS
    do_restore = False


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


# The schemes this transport stands in for (kombu maps both to its Redis transport).
SCHEMES = frozenset({"redis", "rediss"})
