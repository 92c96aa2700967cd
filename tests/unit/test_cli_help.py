"""Issue 10: every option of every command explains itself and shows its default."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from mlwarden.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: str = "mlwarden") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")


COMMANDS = dict(_commands(build_parser()))


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_option_has_help_and_shows_its_default(path: str) -> None:
    parser = COMMANDS[path]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{path}: {name} has no help"
        if action.option_strings and action.default not in (None, False, [], "", argparse.SUPPRESS):
            assert "default" in " ".join(action.help.split()).lower() or f"(default: {action.default})" in text, (
                f"{path}: {name} does not show its default {action.default!r}"
            )


def test_each_publish_kind_has_its_own_description() -> None:
    descriptions = {
        COMMANDS[f"mlwarden publish {kind}"].description
        for kind in ("dataset", "model", "promotion", "approval", "demotion", "rollback")
    }
    assert len(descriptions) == 6 and None not in descriptions


def test_stage_shows_its_default() -> None:
    assert "(default: production)" in " ".join(COMMANDS["mlwarden publish promotion"].format_help().split())
