"""The Lua scripts, loaded from producer/core/lua/*.lua and called by name.

Each file names its KEYS and ARGV in its first lines, for example:

    --- KEYS: claim job lane status_counts
    --- ARGV: job_id record jobs[id idempotency_key record]
    --- uses: redis_now staged_holder

A plain name is one value; `name[6]` is six values; `name[]` is any number of values and
`name[a b]` any number of records of fields a, b (either one last in its line). The loader
prepends the Lua that reads them into two tables, `KEY` and `ARG` (`KEY.claim`,
`ARG.jobs[i].record`), and the fragments a script uses (lua/<fragment>.lua); a `Script` is
called with the same names as keyword arguments. So the order of KEYS and ARGV is known to
this module alone: no caller and no script counts positions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis

_FIELD = re.compile(r"(\w+)(\[[^\]]*\])?")


@dataclass(frozen=True)
class Field:
    """One name of a script's KEYS or ARGV."""

    name: str
    size: int | None = 1  # values it takes; None: any number (the last field only)
    record: tuple[str, ...] = ()  # the fields of each of its records, if it is a list of them

    def lua(self, table: str, source: str, start: int | str) -> str:
        """Lua that reads this field from `source` (KEYS or ARGV) at `start` into table."""
        at = f"{table}.{self.name}"
        if self.size == 1:
            return f"{at} = {source}[{start}]"
        if self.size is not None:
            values = ", ".join(f"{source}[{start} + {k}]" for k in range(self.size))
            return f"{at} = {{{values}}}"
        if not self.record:
            return f"{at} = {{}}\nfor i = {start}, #{source} do {at}[#{at} + 1] = {source}[i] end"
        step = len(self.record)
        fields = ", ".join(f"{f} = {source}[i + {k}]" for k, f in enumerate(self.record))
        return (
            f"{at} = {{}}\nfor i = {start}, #{source}, {step} do {at}[#{at} + 1] = {{{fields}}} end"
        )

    def flatten(self, value: Any) -> list[Any]:
        if self.size == 1:
            return [value]
        values = list(value)
        if self.size is not None and len(values) != self.size:
            raise ValueError(f"{self.name} takes {self.size} values, got {len(values)}")
        if not self.record:
            return values
        return [item[f] for item in values for f in self.record]


def _fields(line: str) -> tuple[Field, ...]:
    fields = []
    for name, bracket in _FIELD.findall(line):
        inner = bracket.strip("[]").strip()
        if not bracket:
            fields.append(Field(name))
        elif inner.isdigit():
            fields.append(Field(name, int(inner)))
        else:
            fields.append(Field(name, None, tuple(inner.split())))
    if any(f.size is None for f in fields[:-1]):
        raise ValueError(f"only the last field may take any number of values: {line}")
    return tuple(fields)


@dataclass(frozen=True)
class Source:
    """A script's text, ready to load, and the names of its KEYS and ARGV."""

    name: str
    keys: tuple[Field, ...]
    args: tuple[Field, ...]
    text: str


def _read(name: str) -> str:
    return (resources.files("producer.core") / "lua" / f"{name}.lua").read_text()


def _prelude(table: str, source: str, fields: Iterable[Field]) -> str:
    lines, at = [f"local {table} = {{}}"], 1
    for f in fields:
        lines.append(f.lua(table, source, at))
        if f.size is not None:
            at += f.size
    return "\n".join(lines)


@cache
def source(name: str) -> Source:
    """The script lua/<name>.lua with what it declares prepended (read once per process)."""
    body = _read(name)
    header = dict(
        re.findall(r"^--- (KEYS|ARGV|uses):(.*)$", body, flags=re.MULTILINE)
    )  # fmt: skip
    keys, args = _fields(header.get("KEYS", "")), _fields(header.get("ARGV", ""))
    names = [f.name for f in (*keys, *args)]
    if len(set(names)) != len(names) or "client" in names:
        raise ValueError(f"{name}.lua: its KEYS and ARGV need distinct names, not `client`")
    parts = [_prelude("KEY", "KEYS", keys), _prelude("ARG", "ARGV", args)]
    parts += [_read(fragment) for fragment in header.get("uses", "").split()]
    return Source(name, keys, args, "\n".join([*parts, body]))


class Script:
    """One Lua script registered on a client (EVALSHA, loaded again if Redis lost it).

    Args:
        client: the Redis it runs on.
        name: its file's name in producer/core/lua/, without `.lua`.
    """

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.source = source(name)
        self.redis = client
        self._script = client.register_script(self.source.text)

    def __call__(self, *, client: Any = None, **named: Any) -> Any:
        """Run the script with its KEYS and ARGV given by name.

        Args:
            client: a pipeline to queue the call on (it then runs in that transaction).
        """
        src = self.source
        expected = {f.name for f in (*src.keys, *src.args)}
        if set(named) != expected:
            raise TypeError(
                f"{src.name}.lua takes {sorted(expected)}: missing "
                f"{sorted(expected - set(named))}, unknown {sorted(set(named) - expected)}"
            )
        return self._script(
            keys=_flat(src.keys, named), args=_flat(src.args, named), client=client or self.redis
        )


def _flat(fields: Sequence[Field], named: Mapping[str, Any]) -> list[Any]:
    return [v for f in fields for v in f.flatten(named[f.name])]
