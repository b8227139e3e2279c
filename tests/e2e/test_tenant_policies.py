"""Tenants' policies through a real Redis and the real `videoqueue tenants` command: a field
set keeps the others, a bad value names its field and writes nothing."""

from __future__ import annotations

import json

from producer.core.tenant_policies import TenantPolicy, get_policy, list_policies, set_policy
from tests.e2e.conftest import env_of
from tests.e2e.test_cli import run


def test_a_tenant_without_a_policy_has_the_defaults(bare_settings):
    assert get_policy("nobody", settings=bare_settings) == TenantPolicy()


def test_setting_one_field_keeps_the_others_and_a_bad_value_writes_nothing(bare_settings):
    s = bare_settings
    set_policy("acme", {"weight": 3, "budget_usd": 10, "budget_period": "day"}, settings=s)
    set_policy("acme", {"max_in_flight": 5}, settings=s)
    assert get_policy("acme", settings=s) == TenantPolicy(
        weight=3, max_in_flight=5, budget_usd=10, budget_period="day"
    )
    for bad in ({"weight": 0}, {"reserved": -1}, {"budget_period": "week"}, {"colour": 1}):
        try:
            set_policy("acme", bad, settings=s)
        except ValueError as e:
            assert next(iter(bad)) in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")
    assert get_policy("acme", settings=s).weight == 3
    assert [v.tenant for v in list_policies(settings=s)] == ["acme"]


def test_the_tenants_commands_set_and_show_through_a_real_process(bare_settings):
    env = env_of(bare_settings)
    options = ["--weight", "2", "--max-in-flight", "4", "--reserved", "1"]
    options += ["--budget-usd", "12.5", "--budget-period", "month", "--json"]
    made = run(env, "tenants", "set", "acme", *options)
    assert made.returncode == 0, made.stderr
    shown = run(env, "tenants", "show", "acme", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == json.loads(made.stdout) == {
        "tenant": "acme", "weight": 2.0, "max_in_flight": 4, "reserved": 1,
        "budget_usd": 12.5, "budget_period": "month",
    }  # fmt: skip
    refused = run(env, "tenants", "set", "acme", "--budget-period", "week")
    assert refused.returncode == 2 and "budget_period" in refused.stderr
    assert run(env, "tenants", "set", "a b", "--weight", "1").returncode == 2
    every = json.loads(run(env, "tenants", "show", "--json").stdout)
    assert [t["tenant"] for t in every] == ["acme"]


def test_clear_puts_a_field_back_to_its_default_and_a_wrong_name_writes_nothing(bare_settings):
    env = env_of(bare_settings)
    set_ = ["tenants", "set", "acme", "--json"]
    assert run(env, *set_, "--budget-usd", "5", "--max-in-flight", "3").returncode == 0
    wrong = run(env, *set_, "--clear", "budget", "--weight", "9")
    assert wrong.returncode == 2 and "--clear" in wrong.stderr and "budget-usd" in wrong.stderr
    both = run(env, *set_, "--clear", "budget-usd", "--budget-usd", "1")
    assert both.returncode == 2 and "--clear" in both.stderr
    cleared = run(env, *set_, "--clear", "budget-usd", "--clear", "max-in-flight")
    assert cleared.returncode == 0, cleared.stderr
    policy = json.loads(run(env, "tenants", "show", "acme", "--json").stdout)
    assert policy["budget_usd"] is None and policy["max_in_flight"] is None
    assert policy["weight"] == 1.0  # the refused calls wrote nothing
