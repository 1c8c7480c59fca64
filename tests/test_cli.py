"""Every subcommand answers --help, and user errors never surface as tracebacks."""

import argparse

import pytest

from regionprompt.cli import build_parser, main


def _subcommand_paths(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommand_paths(sub, prefix + (name,))


def test_every_subcommand_has_help(capsys):
    paths = list(_subcommand_paths(build_parser()))
    assert paths, "the CLI registers no subcommands"
    for path in paths:
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "usage: regionprompt " + " ".join(path) in out


def test_no_command_prints_help(capsys):
    assert main([]) == 1
    assert "usage: regionprompt" in capsys.readouterr().out
