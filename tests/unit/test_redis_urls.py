"""Redis Sentinel addresses: VIDEOQUEUE_BROKER_URL in sentinel form, parsed for every process,
refused with an error naming the setting (never its password), and handed to Celery so that
kombu's failover keeps our transport."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection
from pydantic import ValidationError
from typer.testing import CliRunner

from producer.core.errors import InvalidConfiguration, NotEnoughReplicas
from producer.core.redis_client import RefusalParser, describe, parse_sentinel_url, url_secrets
from producer.core.settings import Settings, get_settings
from worker import redaction
from worker.config import celery_config
from worker.transport import SentinelChannel, SentinelTransport

SECRET = "pa55;word-not-to-leak"
QUOTED = "pa55%3Bword-not-to-leak"  # ';' separates addresses: a password's must be quoted
URL = f"sentinel://:{QUOTED}@h1:26379/2;sentinel://h2:26380/2;sentinel://h3"


def test_a_sentinel_url_gives_every_sentinel_its_database_and_the_servers_password() -> None:
    address = parse_sentinel_url(URL)
    assert address.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert address.db == 2
    assert address.password == SECRET and address.username is None
    assert SECRET not in repr(address)


def test_a_user_in_the_url_is_the_redis_servers_acl_user() -> None:
    address = parse_sentinel_url("sentinel://app:pw@h1:26379;sentinel://h2:26379")
    assert (address.username, address.password) == ("app", "pw")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sentinel://h1:26379;", "address 2 of 2 is empty"),
        ("sentinel://h1:26379;h2:26379", "address 2 of 2 does not start with sentinel://"),
        ("sentinel://:26379", "address 1 of 1 has no host"),
        ("sentinel://h1:port", "port that is not a number"),
        ("sentinel://h1:26379/zero", "the database must be a number"),
        ("sentinel://h1:26379/0;sentinel://h2:26379/1", "different databases"),
        ("sentinel://h1:26379?master=x", "query or fragment"),
    ],
)
def test_a_bad_sentinel_url_is_refused_naming_the_setting_and_the_address(
    url: str, words: str
) -> None:
    with pytest.raises(InvalidConfiguration) as caught:
        parse_sentinel_url(url)
    assert str(caught.value).startswith("VIDEOQUEUE_BROKER_URL: ")
    assert words in str(caught.value)


@pytest.mark.parametrize("field", ["broker_url", "redis_url"])
def test_settings_refuse_a_bad_sentinel_url_without_echoing_its_password(field: str) -> None:
    bad = f"sentinel://:{QUOTED}@h1:26379;sentinel://:{QUOTED}@"
    with pytest.raises(ValidationError) as caught:
        Settings(**{field: bad})
    text = str(caught.value)
    assert f"VIDEOQUEUE_{field.upper()}: sentinel address 2 of 2 has no host" in text
    assert QUOTED not in text and SECRET not in text


def test_settings_take_the_sentinel_master_and_the_replica_wait_with_their_defaults() -> None:
    s = Settings(broker_url=URL)
    assert s.sentinel_master == "mymaster"
    assert (s.redis_wait_replicas, s.redis_wait_timeout_ms) == (0, 500)
    with pytest.raises(ValidationError):
        Settings(redis_wait_timeout_ms=0)  # WAIT 0 would block forever


def test_described_addresses_carry_no_user_or_password() -> None:
    assert describe(URL, "mymaster") == "sentinel://h1:26379,h2:26380,h3:26379/2 (master mymaster)"
    assert describe("redis://app:secret@host:6380/1") == "redis://host:6380/1"
    assert "secret" not in describe("sentinel://:secret@;;")


def test_celery_gets_one_sentinel_in_its_url_and_every_sentinel_in_the_transport() -> None:
    """kombu fails over between ';'-separated addresses by switching to the transport their
    scheme names (its own, without our fixes): so Celery's URL names one sentinel."""
    s = Settings(broker_url=URL, sentinel_master="videos", sentinel_password="sentinel-pw")
    config = celery_config(s)
    assert ";" not in config["broker_url"]
    assert config["broker_transport"] == "worker.transport:SentinelTransport"
    options = config["broker_transport_options"]
    assert options["master_name"] == "videos"
    assert options["sentinels"] == [["h1", 26379], ["h2", 26380], ["h3", 26379]]
    assert options["sentinel_kwargs"]["password"] == "sentinel-pw"
    conn = Connection(config["broker_url"], transport=config["broker_transport"],
                      transport_options=options)  # fmt: skip
    assert conn.transport_cls == "worker.transport:SentinelTransport"
    assert isinstance(conn.transport, SentinelTransport)
    assert conn.alt == []  # nothing to switch to
    assert conn.password == SECRET and conn.virtual_host == "2"
    assert "sentinels" in SentinelChannel.from_transport_options
    assert SentinelChannel.do_restore is False


def test_a_plain_redis_url_keeps_the_plain_transport() -> None:
    config = celery_config(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert config["broker_transport"] == "worker.transport:Transport"
    assert "master_name" not in config["broker_transport_options"]


def test_redis_and_sentinel_passwords_are_redacted_from_log_lines() -> None:
    s = Settings(broker_url=URL, redis_url="redis://:records-pw-1@r:6379/0",
                 sentinel_password="sentinel-pw-2")  # fmt: skip
    assert SECRET in url_secrets(s.broker_url)
    redaction.configure(s)
    try:
        line = redaction.redact(f"auth failed ({SECRET}) records-pw-1 sentinel-pw-2 {URL}")
    finally:
        redaction.configure(Settings())
    assert SECRET not in line and QUOTED not in line
    assert "records-pw-1" not in line and "sentinel-pw-2" not in line


def test_the_cli_answers_a_bad_sentinel_url_with_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from producer.cli import app

    monkeypatch.setenv("VIDEOQUEUE_BROKER_URL", f"sentinel://:{QUOTED}@h1:26379;h2")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["status", "some-job"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert result.exit_code == 2
    text = " ".join(result.output.split())  # as printed, wrapped to the console's width
    assert "VIDEOQUEUE_BROKER_URL: sentinel address 2 of 2 does not start with" in text
    assert QUOTED not in text and "Traceback" not in text


@pytest.mark.parametrize("url", ["nope", "http://user:hunter2@h/0", "localhost:6379", ""])
def test_a_url_that_names_no_redis_is_refused_naming_the_setting_not_the_url(url):
    with pytest.raises(ValidationError) as caught:
        Settings(redis_url=url)
    message = str(caught.value)
    assert "VIDEOQUEUE_REDIS_URL must be a redis://" in message and "hunter2" not in message


@pytest.mark.parametrize("answer", [
    "NOREPLICAS Not enough good replicas to write.",
    "NOREPLICAS Not enough good replicas to write. script: 3f1c, on @user_script:12.",
])  # fmt: skip
def test_a_noreplicas_answer_is_raised_as_not_enough_replicas_saying_what_to_do(
    answer: str,
) -> None:
    """A command's refusal and a script's alike; a ResponseError still for redis-py, which
    raises only those for an answer of Redis."""
    error = RefusalParser.parse_error(answer)
    assert isinstance(error, NotEnoughReplicas) and isinstance(error, redis.ResponseError)
    assert error.status_code == "NOREPLICAS"
    assert "NOREPLICAS" in str(error) and "try again once a replica is back" in str(error)
    assert type(RefusalParser.parse_error("READONLY You can't write")) is redis.ReadOnlyError
