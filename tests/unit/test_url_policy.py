"""The outbound URL policy: which addresses a worker may connect to, in every spelling."""

import pytest

from producer.core.errors import InvalidRequest
from producer.core.urls import UrlPolicy, check_outbound, literal_address

REFUSED = [
    "http://127.0.0.1/", "http://127.1/", "http://0x7f000001/", "http://2130706433/",
    "http://0177.0.0.1/", "http://[::ffff:127.0.0.1]/", "http://[::1]:6379/", "http://localhost/",
    "http://api.localhost/", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.5/",
    "http://172.16.1.1/", "http://192.168.1.1/", "http://100.64.0.1/", "http://[fc00::1]/",
    "http://[fe80::1]/", "http://224.0.0.1/", "http://0.0.0.0/", "http://[::]/",
    "http://LOCALHOST./",
]  # fmt: skip
# IPv6 addresses that lead to an IPv4 one (through a tunnel, a translator) or to a site.
REFUSED_IPV6 = [
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:a9fe:a9fe::1]/",  # 6to4 of the metadata address
    "http://[2002:c0a8:101::]/",  # 6to4 of 192.168.1.1
    "http://[fec0::1]/",  # site-local
    "http://[feff::1]/",
    "http://[64:ff9b::127.0.0.1]/",  # NAT64 of loopback
    "http://[64:ff9b::a00:5]/",  # NAT64 of 10.0.0.5
    "http://[64:ff9b:1::808:808]/",  # local-use NAT64: the operator's own translator
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
    "http://[::127.0.0.1]/",  # IPv4-compatible (deprecated)
    "http://[::808:808]/",
    "http://[::ffff:a9fe:a9fe]/",
]
ALLOWED = [
    "https://hooks.example.com/x", "http://93.184.216.34/", "https://[2606:4700::1111]/",
    "http://[2002:808:808::1]/", "http://[64:ff9b::808:808]/", "http://[::ffff:8.8.8.8]/",
]  # fmt: skip


@pytest.mark.parametrize("url", REFUSED)
def test_every_spelling_of_a_non_public_address_is_refused(url):
    assert UrlPolicy().url_refusal(url) is not None


@pytest.mark.parametrize("url", REFUSED_IPV6)
def test_ipv6_forms_of_refused_ipv4_addresses_and_site_local_ones_are_refused(url):
    assert UrlPolicy().url_refusal(url) is not None


def test_an_embedded_ipv4_address_is_judged_with_the_allowlist():
    policy = UrlPolicy(["127.0.0.0/8"])
    assert policy.url_refusal("http://[2002:7f00:1::]/") is None
    assert policy.url_refusal("http://[64:ff9b::127.0.0.1]/") is None
    assert policy.url_refusal("http://[2002:a00:1::]/") is not None  # 10.0.0.1


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
