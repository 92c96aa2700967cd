"""`mlwarden --version` (issue 10)."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from mlwarden.cli import main


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"mlwarden {version('mlwarden')}\n"
