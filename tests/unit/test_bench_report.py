"""RESULTS.md keeps the figures of scenarios that were not run on this machine."""

from __future__ import annotations

from bench.report import carried_from

PREVIOUS = """# videoqueue benchmark results

| figure | ours | before | compared with | ratio | goal | met |
|---|---|---|---|---|---|---|
| copy: throughput | 109 MiB/s | — | — | — | — | — |
| polling-flaky: calls | 3 | — | — | — | — | — |
| polling: calls | 5 | — | — | — | — | — |

## copy: Copy a 1 GiB MP4

Ran then.

## polling: Polling

Ran earlier.

## Before: the results at commit abc

| copy: throughput | 50 MiB/s | — | — | — | — | — |
"""


def test_a_scenario_without_an_outcome_keeps_its_rows_and_section_but_not_the_befores():
    rows, sections = carried_from(PREVIOUS, ["copy", "polling", "gateway"])
    assert rows == {
        "copy": ["| copy: throughput | 109 MiB/s | — | — | — | — | — |"],
        "polling": ["| polling: calls | 5 | — | — | — | — | — |"],  # not polling-flaky's
    }
    assert sections["copy"] == "## copy: Copy a 1 GiB MP4\n\nRan then.\n"
    assert sections["polling"] == "## polling: Polling\n\nRan earlier.\n"
    assert "gateway" not in rows and "gateway" not in sections
