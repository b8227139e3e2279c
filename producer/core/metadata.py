"""A job's metadata: its bounds, and how it travels as S3 user metadata.

S3 user metadata travels in HTTP headers (`x-amz-meta-<key>: <value>`) and is limited to
2 KB, counted as the UTF-8 bytes of every key and value. A header cannot carry a newline, a
control character or (through botocore) anything but ASCII, so the stored object gets an
encoded copy: keys lower-cased (S3 folds their case) and percent-encoded outside
`[a-z0-9._-]`; a value that is printable ASCII without edge spaces as it is, any other as one
RFC 2047 encoded word, `=?UTF-8?B?<base64 of its UTF-8>?=` (what S3 itself answers for
non-ASCII metadata). The job record keeps the metadata exactly as given. Bounds are checked
at enqueue against the encoded form, so the upload can never be refused for its metadata.
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import quote

MAX_KEYS = 32
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 1024
# S3's limit is 2048 bytes of keys and values; the rest is kept for our own `job-id` entry.
MAX_ENCODED_BYTES = 1900
# The key videoqueue writes into every object's metadata itself.
RESERVED_KEYS = frozenset({"job-id"})

_VERBATIM = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def encode_key(key: str) -> str:
    """The header-safe form of a metadata key."""
    # lower-cased whole (the escapes too): S3 hands keys back lower-cased
    return quote(key.lower(), safe="-_.").lower()


def encode_value(value: str) -> str:
    """The header-safe form of a metadata value (verbatim, or one RFC 2047 encoded word)."""
    if value == "" or (_VERBATIM.fullmatch(value) and not value.startswith("=?")):
        return value
    return f"=?UTF-8?B?{base64.b64encode(value.encode()).decode()}?="


def decode_value(value: str) -> str:
    """encode_value's inverse (for readers of the stored object)."""
    if value.startswith("=?UTF-8?B?") and value.endswith("?="):
        return base64.b64decode(value[10:-2]).decode()
    return value


def object_metadata(job_id: str, metadata: dict[str, str]) -> dict[str, str]:
    """The S3 user metadata of a job's object: the job id and the encoded metadata."""
    return {"job-id": job_id, **{encode_key(k): encode_value(v) for k, v in metadata.items()}}


def metadata_problems(metadata: Any, field: str = "metadata") -> list[dict[str, str]]:
    """What breaks the bounds (each naming field); empty when metadata fits. Assumes a
    mapping of strings to strings (the request schema checks that first)."""
    problems: list[dict[str, str]] = []

    def refuse(message: str) -> None:
        problems.append({"field": field, "message": message})

    if len(metadata) > MAX_KEYS:
        refuse(f"at most {MAX_KEYS} keys (got {len(metadata)})")
        return problems
    folded: dict[str, str] = {}
    for key, value in metadata.items():
        if not 1 <= len(key) <= MAX_KEY_CHARS:
            refuse(f"a key must have 1 to {MAX_KEY_CHARS} characters")
        if len(value) > MAX_VALUE_CHARS:
            refuse(f"the value of {key[:40]!r} is longer than {MAX_VALUE_CHARS} characters")
        if key.lower() in RESERVED_KEYS:
            refuse(f"{key!r} is reserved (videoqueue writes it)")
        if (other := folded.setdefault(key.lower(), key)) != key:
            refuse(f"keys {other[:40]!r} and {key[:40]!r} differ only in case (S3 folds it)")
    # Encoding takes a key's character to at most 24 (lower-casing makes at most two
    # characters, each at most %XX of 4 UTF-8 bytes) and a value of n characters to at most
    # 6n + 4 (base64 of 4 bytes each) plus the encoded word's 12: below that bound, it fits.
    worst = sum(24 * len(k) + 6 * len(v) + 16 for k, v in metadata.items()) + len("job-id")
    if not problems and worst > MAX_ENCODED_BYTES:
        size = sum(len(k) + len(v) for k, v in object_metadata("", metadata).items())
        if size > MAX_ENCODED_BYTES:
            refuse(f"{size} bytes once encoded for S3; at most {MAX_ENCODED_BYTES}")
    return problems
