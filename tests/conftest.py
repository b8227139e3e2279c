"""Suite-wide ordering: under pytest-xdist the run lasts as long as its last worker, so the
few tests that take minutes (the chaos and bench smoke runs) start first, not last."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
