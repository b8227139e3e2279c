"""Celery task messages, written by the producer without importing Celery.

The producer puts a job's record and its first task message into Redis in one atomic step
(see store.py), which Celery's own apply_async cannot do, and without loading Celery into
every backend that enqueues. The envelope is what kombu's Redis transport stores for a
Celery protocol-2 message (checked against kombu 5.7 in tests/e2e: a real worker runs it).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


def task_message(name: str, args: list[Any], queue: str, *, priority: int = 0) -> str:
    """The JSON envelope that `LPUSH queue` hands to a Celery worker.

    Args:
        name: the registered task name (see producer.names).
        args: positional arguments, JSON-serialisable.
        queue: the Celery queue (also the Redis list the worker pops from).
        priority: kombu's Redis priority; 0 goes to the queue's main list.
    """
    task_id = str(uuid.uuid4())
    body = [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return json.dumps(
        {
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": name,
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": repr(args),
                "kwargsrepr": "{}",
                "origin": _ORIGIN,
                "ignore_result": True,
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": priority,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        },
        separators=(",", ":"),
    )
