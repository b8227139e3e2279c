"""The providers file: validation naming the file and the field, routing by model and name,
keys read from the variable the file names, and the single provider without a file."""

from __future__ import annotations

import httpx
import pytest

from producer.core.errors import InvalidConfiguration, InvalidRequest, RetryableError
from producer.core.providers import DEFAULT_PROVIDER, api_key, candidates, providers
from producer.core.requests import parse_request
from producer.core.settings import Settings
from worker.provider import client_for

GOOD = """
[[providers]]
name = "primary"
dialect = "router"
base_url = "https://router.example"
api_key_env = "PRIMARY_KEY"
models = ["sora", "sora-pro"]
max_in_flight = 50
rate_limit_per_s = 10

[[providers]]
name = "backup"
dialect = "openai"
base_url = "https://api.openai.example"
api_key_env = "BACKUP_KEY"
"""


def _settings(tmp_path, text: str) -> Settings:
    path = tmp_path / f"providers-{abs(hash(text))}.toml"
    path.write_text(text)
    return Settings(providers_file=path)


def test_a_providers_file_lists_providers_in_order_with_keys_from_the_named_variables(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("PRIMARY_KEY", "sk-primary")
    s = _settings(tmp_path, GOOD)
    first, second = providers(s)
    assert (first.name, first.max_in_flight, first.rate_limit_per_s) == ("primary", 50, 10)
    assert second.models == ["*"] and second.max_in_flight is None
    assert api_key(first, s).get_secret_value() == "sk-primary"
    assert api_key(second, s).get_secret_value() == ""


def test_without_a_file_the_single_provider_settings_make_one_provider():
    s = Settings(api_base_url="http://x.test", api_key="sk-one", max_in_flight=3)
    (only,) = providers(s)
    assert (only.name, only.base_url, only.max_in_flight) == (DEFAULT_PROVIDER, "http://x.test", 3)
    assert api_key(only, s).get_secret_value() == "sk-one"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (GOOD.replace('"https://router.example"', '"ftp://x"'), "providers[0].base_url"),
        (GOOD.replace('api_key_env = "BACKUP_KEY"', 'api_key = "sk-x"'), "providers[1]"),
        (GOOD.replace("max_in_flight = 50", "max_in_flight = 0"), "providers[0].max_in_flight"),
        (GOOD.replace('"backup"', '"primary"'), "primary repeated"),
        ("[[providers]\n", "not valid TOML"),
        (
            GOOD.replace("rate_limit_per_s = 10", "rate_limit_per_s = 10\nprices = { sora = 1 }"),
            "providers[0].prices.sora",
        ),
        (
            GOOD.replace(
                "rate_limit_per_s = 10",
                "rate_limit_per_s = 10\nprices = { sora = { usd_per_second = -0.1 } }",
            ),
            "providers[0].prices.sora.usd_per_second",
        ),
        (
            GOOD.replace(
                "rate_limit_per_s = 10",
                "rate_limit_per_s = 10\nprices = { sora = { usd_per_second = { big = 1 } } }",
            ),
            "providers[0].prices.sora.usd_per_second: resolutions",
        ),
        (
            GOOD.replace(
                "rate_limit_per_s = 10",
                "rate_limit_per_s = 10\nprices = { sora = { "
                "usd_per_second = 1, usd_per_job = 1 } }",
            ),
            "providers[0].prices.sora: give exactly one",
        ),
    ],
)
def test_a_bad_providers_file_is_refused_naming_the_file_and_the_field(tmp_path, text, field):
    s = _settings(tmp_path, text)
    with pytest.raises(InvalidConfiguration) as e:
        providers(s)
    assert "VIDEOQUEUE_PROVIDERS_FILE" in str(e.value) and str(s.providers_file) in str(e.value)
    assert field in str(e.value)


def test_prices_per_second_per_job_and_by_resolution_are_read_from_the_file(tmp_path):
    priced = GOOD.replace(
        "rate_limit_per_s = 10",
        """rate_limit_per_s = 10
prices = { sora = { usd_per_second = 0.10 }, sora-pro = { usd_per_second = { "720x1280" = 0.3, \
"1024x1792" = 0.5 } }, "*" = { usd_per_job = 2 } }""",
    ).replace("\\\n", "")
    first, second = providers(_settings(tmp_path, priced))
    assert first.price_of("sora").usd_per_second == 0.1
    assert first.price_of("sora-pro").usd_per_second == {"720x1280": 0.3, "1024x1792": 0.5}
    assert first.price_of("veo").usd_per_job == 2.0  # "*": any other model
    assert second.prices == {} and second.price_of("sora") is None


def test_without_a_file_the_prices_are_the_environments_json_refused_naming_the_field():
    (only,) = providers(Settings(prices='{"sora": {"usd_per_job": 0.5}}'))
    assert only.price_of("sora").usd_per_job == 0.5
    for raw, field in (('{"sora": {"usd_per_job": "x"}}', "sora.usd_per_job"),
                       ("{", "not valid JSON")):  # fmt: skip
        with pytest.raises(InvalidConfiguration) as e:
            providers(Settings(prices=raw))
        assert "VIDEOQUEUE_PRICES" in str(e.value) and field in str(e.value)


def test_env_prices_beside_a_providers_file_are_refused(tmp_path):
    s = _settings(tmp_path, GOOD).model_copy(update={"prices": '{"sora": {"usd_per_job": 1}}'})
    with pytest.raises(InvalidConfiguration, match="VIDEOQUEUE_PRICES"):
        providers(s)


def test_candidates_are_the_named_provider_or_every_one_serving_the_model(tmp_path):
    s = _settings(tmp_path, GOOD)
    assert candidates(parse_request({"prompt": "x", "model": "sora"}), s) == ["primary", "backup"]
    assert candidates(parse_request({"prompt": "x", "model": "veo-3"}), s) == ["backup"]
    assert candidates(parse_request({"prompt": "x", "provider": "backup"}), s) == ["backup"]
    for bad in ({"provider": "nope"}, {"provider": "primary", "model": "veo-3"}):
        with pytest.raises(InvalidRequest) as e:
            candidates(parse_request({"prompt": "x", **bad}), s)
        assert e.value.errors[0]["field"] == "provider"


def _failing_create(handler) -> RetryableError:
    client = client_for(
        Settings(api_base_url="http://p.test", api_key="sk-t"),
        http=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(RetryableError) as e:
        client.create(parse_request({"prompt": "x"}), client.api_format, "job_1")
    return e.value


def test_only_creates_that_certainly_did_not_take_effect_are_marked_not_taken():
    def refused(request):
        raise httpx.ConnectError("connection refused", request=request)

    def dropped(request):
        raise httpx.RemoteProtocolError("server disconnected", request=request)

    def timed_out(request):
        raise httpx.ReadTimeout("read timed out", request=request)

    assert _failing_create(refused).not_taken
    assert _failing_create(lambda r: httpx.Response(429, json={})).not_taken
    assert not _failing_create(dropped).not_taken
    assert not _failing_create(timed_out).not_taken
    assert not _failing_create(lambda r: httpx.Response(502, json={})).not_taken


def test_doctor_names_a_provider_whose_key_variable_is_empty(tmp_path, monkeypatch):
    from ops.doctor import Problem, _provider_key

    s = _settings(tmp_path, GOOD)
    monkeypatch.setenv("PRIMARY_KEY", "sk-primary")
    monkeypatch.delenv("BACKUP_KEY", raising=False)
    with pytest.raises(Problem) as e:
        _provider_key(s)
    assert "backup" in str(e.value) and "BACKUP_KEY" in str(e.value)
    monkeypatch.setenv("BACKUP_KEY", "sk-backup")
    assert "2 providers" in _provider_key(s)


def test_metric_labels_map_hostile_hosts_and_codes_into_bounded_sets():
    """A request is counted under the provider's configured name whatever host answered, a
    name the configuration lacks under "other", and a failure code only if it is ours."""
    from worker import metrics

    def count(provider: str) -> float:
        return metrics.PROVIDER_REQUESTS.labels(provider, "download", "2xx")._value.get()

    before = count("default"), count("other")
    for host in ("other.test", "203.0.113.9", "x" * 200):
        answer = httpx.Response(200, request=httpx.Request("GET", f"https://{host}/v.mp4"))
        metrics.provider_request("default", "download", answer)
    metrics.provider_request("not-configured", "download", httpx.Response(200))
    assert (count("default"), count("other")) == (before[0] + 3, before[1] + 1)
    assert metrics.provider_label("203.0.113.9") == "other"
    for theirs in ("content_policy_violation", "40001", "x" * 500, "http_418\n", ""):
        assert metrics.failure_label(theirs) == "other"
    for ours in ("timeout", "download_failed", "internal_error", "storage_unavailable"):
        assert metrics.failure_label(ours) == ours


def test_doctor_names_a_bad_price_table_of_the_single_provider():
    from ops.doctor import Problem, _provider_key

    s = Settings(api_key="sk-one", prices='{"sora": {"usd_per_job": -2}}')
    with pytest.raises(Problem) as e:
        _provider_key(s)
    assert "VIDEOQUEUE_PRICES" in str(e.value) and "sora.usd_per_job" in str(e.value)
