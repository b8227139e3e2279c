"""Celery task messages, written without importing Celery.

The schedule's claim script (worker/pump.py) writes the message for each claim inside Redis,
atomically with the claim, which Celery's own apply_async cannot do. The envelope is what
kombu's Redis transport stores for a Celery protocol-2 message (Celery and kombu 5.x, bounded
in pyproject.toml): tests/e2e/test_celery_envelope.py compares it, field by field, with the
one Celery's own send_task writes, and the other e2e tests run it through real workers.
"""

from __future__ import annotations

import json
import os
import socket
from functools import lru_cache
from typing import Any

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'

# The body is plain JSON text with no body_encoding, which kombu passes through as it is (it
# decodes only the encodings it names), so a Lua script can write it without base64.
_ENVELOPE = (
    '{"body":%(body)s,"content-encoding":"utf-8","content-type":"application/json",'
    '"headers":{"lang":"py","task":%(task)s,"id":"%(id)s","shadow":null,"eta":null,'
    '"expires":null,"group":null,"group_index":null,"retries":0,"timelimit":[null,null],'
    '"root_id":"%(id)s","parent_id":null,"argsrepr":"(claimed from the schedule)",'
    '"kwargsrepr":"{}","origin":%(origin)s,"ignore_result":true,"replaced_task_nesting":0,'
    '"stamped_headers":null,"stamps":{}},'
    '"properties":{"correlation_id":"%(id)s","reply_to":"","delivery_mode":2,'
    '"delivery_info":{"exchange":"","routing_key":%(queue)s},"priority":0,'
    '"delivery_tag":"%(tag)s"}}'
)


@lru_cache(maxsize=64)
def claim_envelope(name: str, queue: str) -> list[str]:
    """The envelope of task `name` on `queue`, cut where the claim script fills in its
    values: body (a JSON string), id, id, id, delivery tag (six pieces)."""
    text = _ENVELOPE % {
        "body": "\x00", "task": json.dumps(name), "id": "\x00", "origin": json.dumps(_ORIGIN),
        "queue": json.dumps(queue), "tag": "\x00",
    }  # fmt: skip
    pieces = text.split("\x00")
    assert len(pieces) == 6, pieces
    return pieces


def task_message(name: str, args: list[Any], queue: str) -> str:
    """The JSON envelope that `LPUSH queue` hands to a Celery worker: task `name` with
    positional `args` (what the claim script writes, for tests and benchmarks)."""
    body = json.dumps(f"[{json.dumps(args, separators=(',', ':'))},{{}},{_EMBED}]")
    ids = os.urandom(16).hex()
    p = claim_envelope(name, queue)
    return p[0] + body + p[1] + ids + p[2] + ids + p[3] + ids + p[4] + ids + p[5]
