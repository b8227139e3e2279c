"""API keys of our own through a real Redis and the real `videoqueue` command: stored hashed
(the secret is in no key of the deployment, nor in any log line), revoked at once, and
limited per key with a Retry-After."""

from __future__ import annotations

import json
import logging
import time

import pytest
import redis

from producer.core.errors import KeyNotFound, Unauthenticated
from producer.core.keys import (
    Principal,
    admit,
    authenticate,
    create_key,
    list_keys,
    revoke_key,
    take_request_token,
)
from producer.core.store import store
from tests.e2e.conftest import env_of
from tests.e2e.test_cli import run


def _every_value(client: redis.Redis, prefix: str) -> bytes:
    """Every key name and value under prefix, as one blob to search."""
    blob = []
    for key in client.scan_iter(f"{prefix}*"):
        blob.append(key)
        kind = client.type(key)
        if kind == b"string":
            blob.append(client.get(key) or b"")
        elif kind == b"hash":
            blob += [b for kv in client.hgetall(key).items() for b in kv]
        elif kind == b"zset":
            blob += client.zrange(key, 0, -1)
        elif kind == b"list":
            blob += client.lrange(key, 0, -1)
        elif kind == b"set":
            blob += list(client.smembers(key))
    return b"\n".join(blob)


def test_a_key_authenticates_as_its_tenant_and_its_secret_is_stored_nowhere(bare_settings, caplog):
    s = bare_settings
    caplog.set_level(logging.DEBUG)
    key, secret = create_key("acme", settings=s)
    admin, admin_secret = create_key("ops", admin=True, settings=s)
    assert secret.startswith("vq_") and len(secret) >= 3 + 43 and secret != admin_secret
    assert key.prefix == secret[: len(key.prefix)] and len(key.prefix) < 12

    assert authenticate(secret, settings=s) == Principal(key.id, "acme", False)
    assert authenticate(admin_secret, settings=s) == Principal(admin.id, "ops", True)
    assert [k.id for k in list_keys(settings=s)] == [key.id, admin.id]
    assert all("sha256" not in k.model_dump() for k in list_keys(settings=s))

    client = redis.Redis.from_url(s.records_url)
    stored = _every_value(client, s.key_prefix)
    for clear in (secret, admin_secret):
        assert clear.encode() not in stored
        assert clear[3:].encode() not in stored  # not even without its "vq_"
    for clear in (secret, admin_secret):
        assert clear not in caplog.text


@pytest.mark.parametrize(
    "offered", ["", "vq_", "vq_unknown-but-well-formed-0123456789abcdefghijklmnop",
                "Bearer vq_x", "sk-other", "vq_" + "a" * 200, "vq_\u00e9t\u00e9", None],
)  # fmt: skip
def test_missing_unknown_or_malformed_keys_get_one_error_that_never_repeats_them(
    bare_settings, offered
):
    create_key("acme", settings=bare_settings)
    with pytest.raises(Unauthenticated) as caught:
        authenticate(offered, settings=bare_settings)  # type: ignore[arg-type]
    assert str(caught.value) == "missing or invalid API key"


def test_a_revoked_key_is_refused_at_once(bare_settings):
    s = bare_settings
    key, secret = create_key("acme", settings=s)
    other, other_secret = create_key("acme", settings=s)
    assert authenticate(secret, settings=s).key_id == key.id

    revoked = revoke_key(key.id, settings=s)
    assert revoked.revoked_at is not None
    with pytest.raises(Unauthenticated):
        authenticate(secret, settings=s)  # the very next call: nothing cached it
    assert authenticate(other_secret, settings=s).key_id == other.id
    listed = {k.id: k.revoked_at for k in list_keys(settings=s)}
    assert listed == {key.id: revoked.revoked_at, other.id: None}
    # Revoking it again changes nothing; an unknown id is named.
    assert revoke_key(key.id, settings=s).revoked_at == revoked.revoked_at
    with pytest.raises(KeyNotFound, match="key_nope"):
        revoke_key("key_nope", settings=s)
    with pytest.raises(KeyNotFound) as caught:
        revoke_key(other_secret, settings=s)
    assert other_secret not in str(caught.value)
    assert authenticate(other_secret, settings=s).key_id == other.id


def test_a_key_over_its_rate_gets_a_retry_after_and_other_keys_do_not_wait(bare_settings):
    s = bare_settings.model_copy(update={"api_rate_per_s": 4.0, "api_burst": 3})
    _, secret = create_key("acme", settings=s)
    other, _ = create_key("acme", settings=s)
    me, them = authenticate(secret, settings=s), Principal(other.id, "acme", False)

    assert [take_request_token(me, settings=s) for _ in range(3)] == [None] * 3
    retry_after_s = take_request_token(me, settings=s)
    assert retry_after_s is not None and 0 < retry_after_s <= 0.25
    assert take_request_token(them, settings=s) is None  # a bucket per key
    time.sleep(retry_after_s + 0.02)
    assert take_request_token(me, settings=s) is None
    assert take_request_token(me, settings=s) is not None  # only one token came back


def test_the_keys_commands_create_list_and_revoke_through_a_real_process(bare_settings):
    s = bare_settings
    env = env_of(s)
    made = run(env, "keys", "create", "--tenant", "acme", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key.keys() >= {"id", "key", "tenant", "admin", "created_at"}
    assert (key["tenant"], key["admin"]) == ("acme", False) and key["key"].startswith("vq_")
    assert authenticate(key["key"], settings=s).tenant == "acme"

    admin = json.loads(run(env, "keys", "create", "--tenant", "ops", "--admin", "--json").stdout)
    assert admin["admin"] is True and authenticate(admin["key"], settings=s).admin

    plain = run(env, "keys", "create", "--tenant", "acme")
    assert plain.returncode == 0 and plain.stdout.strip().startswith("vq_")

    listed = run(env, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows][:2] == [key["id"], admin["id"]]
    assert all("key" not in r and "sha256" not in r for r in rows)
    table = run(env, "keys", "list")
    for secret in (key["key"], admin["key"], plain.stdout.strip()):
        assert secret not in listed.stdout + table.stdout + table.stderr + listed.stderr

    revoked = run(env, "keys", "revoke", key["id"], "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked_at"]
    with pytest.raises(Unauthenticated):
        authenticate(key["key"], settings=s)

    assert run(env, "keys", "revoke", "key_nope").returncode == 1
    assert run(env, "keys", "create", "--tenant", "a b").returncode == 2
    assert run(env, "keys", "create").returncode == 2  # --tenant is required
    pasted = run(env, "keys", "revoke", admin["key"])
    assert pasted.returncode == 2 and admin["key"] not in pasted.stdout + pasted.stderr


def test_admit_finds_the_key_and_spends_its_token_in_one_round_trip(bare_settings, monkeypatch):
    s = bare_settings.model_copy(update={"api_rate_per_s": 4.0, "api_burst": 2})
    key, secret = create_key("acme", settings=s)
    client, sent = store(s).redis, []
    send = client.execute_command
    monkeypatch.setattr(
        client, "execute_command", lambda *a, **k: sent.append(a[0]) or send(*a, **k)
    )
    assert admit(secret, settings=s) == (Principal(key.id, "acme", False), None)
    assert sent == ["EVALSHA"]
    monkeypatch.undo()
    # The same bucket as take_request_token's: its burst is shared, then a Retry-After.
    me = authenticate(secret, settings=s)
    assert take_request_token(me, settings=s) is None
    principal, retry_after_s = admit(secret, settings=s)
    assert principal == me and retry_after_s is not None and 0 < retry_after_s <= 0.25
    for bad in ("vq_nope", "not-a-key", "vq_" + "x" * 200, None):
        with pytest.raises(Unauthenticated):
            admit(bad, settings=s)  # type: ignore[arg-type]
    revoke_key(key.id, settings=s)
    with pytest.raises(Unauthenticated):
        admit(secret, settings=s)
