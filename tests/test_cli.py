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


def test_command_table_matches_what_the_modules_register():
    from regionprompt.cli import COMMANDS

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(action.choices) == list(COMMANDS)
    helps = {a.dest: a.help for a in action._choices_actions}
    assert helps == {name: help_text for name, (_, help_text) in COMMANDS.items()}


def test_help_and_version_import_no_model_code():
    """`regionprompt --help` / `--version` / `world --help` start without torch (seconds of import)."""
    import subprocess
    import sys

    code = ("import sys\nfrom regionprompt.cli import main\n"
            "for argv in (['--help'], ['--version'], ['world', '--help'], ['nonsense']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-500:]
    assert "invalid choice: 'nonsense'" in out.stderr


def test_detect_imports_only_what_detection_needs():
    """`regionprompt detect` (its command module and the API) imports no training, serving or extra
    model code: open_clip's own models with timm, transformers (loaded only when MiniLM embeds text the
    cache lacks), spaCy, FastAPI, scipy, evaluation. Counted by modules, not timed."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\nimport regionprompt.cli.detect, regionprompt.api\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = set(json.loads(out.stdout))
    heavy = {"timm", "transformers", "open_clip.factory", "open_clip.coca_model", "spacy", "fastapi", "scipy",
             "faster_coco_eval", "regionprompt.server", "regionprompt.train.clip_pretrain", "regionprompt.eval"}
    assert not heavy & modules
    # torch and torchvision alone are ~2,300 modules; open_clip's whole package added ~500 more.
    assert len(modules) < 2600, len(modules)
