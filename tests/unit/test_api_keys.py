"""API keys' pure parts: what a listed key shows, and a malformed key refused without a
round trip to Redis or a word of it in the error."""

from __future__ import annotations

import pytest
import redis

from producer.core.errors import Unauthenticated
from producer.core.keys import ApiKey, _KeyRing, _StoredKey


def test_a_listed_key_shows_neither_its_secret_nor_its_hash():
    stored = _StoredKey(id="key_1", tenant="acme", admin=False, created_at="t", revoked_at=None,
                        prefix="vq_abcdef", sha256="0" * 64)  # fmt: skip
    listed = stored.listed()
    assert type(listed) is ApiKey
    assert listed.model_dump().keys() == {"id", "tenant", "admin", "created_at", "revoked_at",
                                          "prefix"}  # fmt: skip


@pytest.mark.parametrize("offered", ["", "sk-live-123", "vq_" + "x" * 200, "vq_\u00e9", None, 7])
def test_a_malformed_key_is_refused_before_redis_is_asked(offered):
    # A client of a port nothing listens on: any round trip would raise ConnectionError.
    ring = _KeyRing(redis.Redis(port=1, socket_connect_timeout=0.1), "vq")
    with pytest.raises(Unauthenticated) as caught:
        ring.authenticate(offered)
    assert str(caught.value) == "missing or invalid API key"
