"""Suite-wide settings. Ordering: under pytest-xdist the run lasts as long as its last
worker, so the few tests that take minutes (the chaos and bench smoke runs) start first."""

from __future__ import annotations

import pytest
from hypothesis import settings

# Property tests judge answers, not speed: on a 2-core host shared with real workers one
# example can take longer than hypothesis's 200 ms deadline, which would fail a right answer.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
