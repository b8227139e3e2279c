"""Tenant names: checked before anything is written, and kept apart in the keys they name."""

from __future__ import annotations

import pytest

from producer.core.errors import InvalidRequest
from producer.core.names import Keys
from producer.core.records import BatchRecord, JobRecord
from producer.core.tenants import DEFAULT_TENANT, check_tenant


@pytest.mark.parametrize("name", ["acme", "a", "Team_7.prod-eu", "x" * 64])
def test_a_tenant_of_letters_digits_and_dot_underscore_dash_is_accepted(name):
    assert check_tenant(name) == name


def test_no_tenant_is_the_default_one():
    assert check_tenant(None) == DEFAULT_TENANT == "default"


@pytest.mark.parametrize("name", ["", "x" * 65, "a:b", "a@b", "a b", "é", "a/b", 7, "a\n"])
def test_a_bad_tenant_is_refused_naming_the_field(name):
    with pytest.raises(InvalidRequest) as caught:
        check_tenant(name)
    assert caught.value.errors[0]["field"] == "tenant"
    assert str(caught.value).startswith("tenant:")


def test_records_without_a_tenant_are_the_default_tenants():
    """Records written before tenants existed read back as the default tenant's."""
    old = JobRecord.model_validate({"id": "job_1", "request": {}})
    assert old.tenant == "default" and old.public()["tenant"] == "default"
    batch = BatchRecord(id="b", total=0, counts={}, ended=0, created_at="2026-12-05T00:00:00Z")
    assert batch.tenant == "default"


def test_the_default_tenants_idempotency_claims_keep_their_names_and_others_are_apart():
    keys = Keys("vq")
    assert keys.idempotency("order-1") == "vq:idem:order-1"  # as before tenants
    assert keys.idempotency("order-1", "default") == "vq:idem:order-1"
    acme, other = keys.idempotency("order-1", "acme"), keys.idempotency("order-1", "other")
    assert len({acme, other, keys.idempotency("order-1")}) == 3
    # No key of the default tenant can spell another tenant's claim.
    assert not acme.startswith("vq:idem:")
