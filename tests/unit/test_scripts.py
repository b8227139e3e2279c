"""The Lua scripts live in producer/core/lua/, ship with the package, and are called by name."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import redis

from producer.core.scripts import Script, source

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "producer" / "core" / "lua"
# Files a script includes (`--- uses:`), not scripts of their own.
FRAGMENTS = {"redis_now", "staged_holder", "claim_limits", "claim_push", "parked_strays"}
SCRIPTS = sorted(p.stem for p in LUA.glob("*.lua") if p.stem not in FRAGMENTS)


def test_no_lua_is_left_in_python_strings() -> None:
    found = [
        str(path.relative_to(ROOT))
        for package in ("producer", "worker", "ops", "bench")
        for path in (ROOT / package).rglob("*.py")
        if "redis.call(" in path.read_text()
    ]
    assert found == []


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_reads_its_keys_and_arguments_only_by_the_names_it_declares(name: str) -> None:
    """No position (KEYS[3], ARGV[12 + 4 * i]) in a script, and no name it does not declare:
    the order lives in the loader alone."""
    src = source(name)
    body = re.sub(r"--.*", "", (LUA / f"{name}.lua").read_text())  # the code, no comments
    assert not re.search(r"\b(KEYS|ARGV)\b", body)
    declared_keys = {f.name for f in src.keys}
    declared_args = {f.name for f in src.args}
    assert set(re.findall(r"\bKEY\.(\w+)", body)) <= declared_keys
    assert set(re.findall(r"\bARG\.(\w+)", body)) <= declared_args


def test_a_script_called_with_a_name_it_does_not_declare_is_refused() -> None:
    # register_script reaches no server: nothing here needs a Redis.
    place = Script(redis.Redis(), "place")
    with pytest.raises(TypeError, match="missing.*keep_faults.*unknown.*keep_fault"):
        place(leases="l", faults="f", lanes=["a"], member="m", lane=1, delay_s=0, token="",
              keep_fault="")  # fmt: skip


def test_a_group_of_records_is_flattened_in_its_declared_field_order() -> None:
    jobs = next(f for f in source("stage_batch").args if f.name == "jobs")
    rows = [{"record": "{}", "id": "a", "idempotency_key": "", "reserve": 5, "priced": "1"},
            {"id": "b", "priced": "", "reserve": 0, "record": "[]",
             "idempotency_key": "k"}]  # fmt: skip
    assert jobs.flatten(rows) == ["a", "", "{}", 5, "1", "b", "k", "[]", 0, ""]


def test_the_lua_files_ship_with_the_package() -> None:
    """A plain `pip install` (not editable) has them: package data names them."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["producer.core"]
    for path in LUA.glob("*.lua"):
        assert any(fnmatch(f"lua/{path.name}", p) for p in patterns), path.name
