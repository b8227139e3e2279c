"""The outbound URL policy: which addresses a worker may connect to, in every spelling."""

import pytest

from producer.errors import InvalidRequest
from producer.urls import UrlPolicy, check_outbound, literal_address

REFUSED = [
    "http://127.0.0.1/", "http://127.1/", "http://0x7f000001/", "http://2130706433/",
    "http://0177.0.0.1/", "http://[::ffff:127.0.0.1]/", "http://[::1]:6379/", "http://localhost/",
    "http://api.localhost/", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.5/",
    "http://172.16.1.1/", "http://192.168.1.1/", "http://100.64.0.1/", "http://[fc00::1]/",
    "http://[fe80::1]/", "http://224.0.0.1/", "http://0.0.0.0/", "http://[::]/",
    "http://LOCALHOST./",
]  # fmt: skip
ALLOWED = ["https://hooks.example.com/x", "http://93.184.216.34/", "https://[2606:4700::1111]/"]


@pytest.mark.parametrize("url", REFUSED)
def test_every_spelling_of_a_non_public_address_is_refused(url):
    assert UrlPolicy().url_refusal(url) is not None


@pytest.mark.parametrize("url", ALLOWED)
def test_public_addresses_and_names_pass_before_resolution(url):
    assert UrlPolicy().url_refusal(url) is None


def test_odd_ipv4_spellings_are_read_as_the_address_a_resolver_would_use():
    assert str(literal_address("127.1")) == "127.0.0.1"
    assert str(literal_address("0x7f000001")) == "127.0.0.1"
    assert str(literal_address("2130706433")) == "127.0.0.1"
    assert literal_address("hooks.example.com") is None


def test_the_allowlist_lets_chosen_networks_and_names_through():
    policy = UrlPolicy(["127.0.0.0/8", "hooks.internal"])
    assert policy.url_refusal("http://127.0.0.1:8000/hook") is None
    assert policy.url_refusal("http://127.1/") is None
    assert policy.url_refusal("http://hooks.internal/") is None and policy.trusts_name(
        "hooks.internal"
    )
    assert policy.url_refusal("http://10.0.0.1/") is not None
    assert policy.url_refusal("http://localhost/") is not None  # a name, not in the list


def test_a_refused_webhook_url_is_an_invalid_request_naming_the_field():
    with pytest.raises(InvalidRequest) as e:
        check_outbound("http://127.1:6379/", "webhook_url", UrlPolicy())
    assert e.value.errors[0]["field"] == "webhook_url"
    assert "webhook_url" in str(e.value)
