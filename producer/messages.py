"""Celery task messages, written by the producer without importing Celery.

The producer puts a job's record and its first task message into Redis in one atomic step
(see store.py), which Celery's own apply_async cannot do, and without loading Celery into
every backend that enqueues. The envelope is what kombu's Redis transport stores for a
Celery protocol-2 message (kombu 5.7; tests/e2e run it through real workers).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
from functools import lru_cache
from typing import Any

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_PLAIN = re.compile(r"[A-Za-z0-9_.-]+")
_EMBED = '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'

# The envelope as one template: batches build tens of thousands of these, and filling a
# template is several times faster than json.dumps of the nested dict.
_ENVELOPE = (
    '{"body":"%(body)s","content-encoding":"utf-8","content-type":"application/json",'
    '"headers":{"lang":"py","task":%(task)s,"id":"%(id)s","shadow":null,"eta":%(eta)s,'
    '"expires":null,"group":null,"group_index":null,"retries":0,"timelimit":[null,null],'
    '"root_id":"%(id)s","parent_id":null,"argsrepr":%(argsrepr)s,"kwargsrepr":%(kwargsrepr)s,'
    '"origin":%(origin)s,"ignore_result":true},'
    '"properties":{"correlation_id":"%(id)s","reply_to":"","delivery_mode":2,'
    '"delivery_info":{"exchange":"","routing_key":%(queue)s},"priority":%(priority)d,'
    '"body_encoding":"base64","delivery_tag":"%(tag)s"}}'
)


def task_message(
    name: str,
    args: list[Any],
    queue: str,
    *,
    kwargs: dict[str, Any] | None = None,
    eta: str | None = None,
    priority: int = 0,
) -> str:
    """The JSON envelope that `LPUSH queue` hands to a Celery worker.

    Args:
        name: the registered task name (see producer.names).
        args: positional arguments, JSON-serialisable.
        queue: the Celery queue (also the Redis list the worker pops from).
        kwargs: keyword arguments, JSON-serialisable.
        eta: ISO 8601 time the task was due (a deferred task; see worker.deferred).
        priority: kombu's Redis priority; 0 goes to the queue's main list.
    """
    kw = json.dumps(kwargs, separators=(",", ":")) if kwargs else "{}"
    if len(args) == 1 and isinstance(args[0], str) and _PLAIN.fullmatch(args[0]):
        # The common case (a job or batch id) without two JSON encodings of the args.
        body = f'[["{args[0]}"],{kw},{_EMBED}]'
        argsrepr = f"\"['{args[0]}']\""
    else:
        body = f"[{json.dumps(args, separators=(',', ':'))},{kw},{_EMBED}]"
        argsrepr = json.dumps(repr(args))
    ids = os.urandom(32).hex()
    return _ENVELOPE % {
        "body": base64.b64encode(body.encode()).decode(),
        "task": _quoted(name),
        "id": ids[:32],
        "eta": json.dumps(eta),
        "argsrepr": argsrepr,
        "kwargsrepr": json.dumps(repr(kwargs or {})),
        "origin": _quoted(_ORIGIN),
        "queue": _quoted(queue),
        "priority": priority,
        "tag": ids[32:],
    }


@lru_cache(maxsize=64)
def _quoted(text: str) -> str:
    return json.dumps(text)


def claim_envelope(name: str, queue: str) -> list[str]:
    """The envelope of a message the schedule's claim script writes (worker/pump.py), cut
    where the script fills in its values: body, id, id, id, delivery tag (six pieces).

    The body is plain JSON text with no body_encoding, which kombu passes through as it is
    (it decodes only the encodings it names), so a Lua script can write it without base64.
    """
    marks = {"body": "\x00", "id": "\x01", "tag": "\x02"}
    text = _ENVELOPE % {
        "body": marks["body"],
        "task": _quoted(name),
        "id": marks["id"],
        "eta": "null",
        "argsrepr": '"(claimed from the schedule)"',
        "kwargsrepr": '"{}"',
        "origin": _quoted(_ORIGIN),
        "queue": _quoted(queue),
        "priority": 0,
        "tag": marks["tag"],
    }
    text = text.replace('"body":"\x00"', '"body":\x00').replace(',"body_encoding":"base64"', "")
    pieces: list[str] = []
    for part in text.split("\x00"):
        for sub in part.split("\x01"):
            pieces.extend(sub.split("\x02"))
    assert len(pieces) == 6, pieces
    return pieces
