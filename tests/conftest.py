"""Fixtures shared by every test layer, and the markers that select the layers.

`-m integration` selects every test under `tests/integration/` (a real nats-server per test);
`-m postgres` selects every case that runs against PostgreSQL; `-m "not integration"` is the
fast unit layer. Markers are applied here by path and by parameter, so a new test in those
places is selected without anyone remembering to decorate it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.embedded import EmbeddedNats

# Numeric libraries should not fight over the two cores of a CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration/ `integration`."""
    for item in items:
        if item.path.is_relative_to(_INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A fresh nats-server with JetStream on a free port and a temporary store folder."""
    server = EmbeddedNats(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()
