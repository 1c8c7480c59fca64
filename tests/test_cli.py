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


def test_a_typo_shows_the_subcommands_usage_and_the_closest_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["detect", "scene.png", "--txt", "dog", "--out", "out"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: regionprompt detect ") and "--txt (did you mean --text?)" in err
    with pytest.raises(SystemExit):
        main(["world", "build", "--split", "test", "--images", "1", "--out", "out", "--sed", "3"])
    err = capsys.readouterr().err
    assert err.startswith("usage: regionprompt world build ") and "--sed (did you mean --seed?)" in err


def test_detect_a_missing_image_is_an_error_before_any_model_loads(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "missing.png"), "--text", "dog", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no such file: ") and "missing.png" in err and "note:" not in err


def test_a_model_name_that_is_not_a_folder_says_what_is_expected(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    assert main(["detect", str(tmp_path / "a.png"), "--text", "dog", "--model", "yolov8n", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: yolov8n: no such detector folder" in err and "give 'default'" in err


def test_quiet_hides_progress_bars(monkeypatch):
    from regionprompt.logging_utils import configure_logging, progress_hidden

    monkeypatch.delenv("REGIONPROMPT_NO_PROGRESS", raising=False)
    try:
        configure_logging(-1)
        assert progress_hidden()
        configure_logging(0)
        assert not progress_hidden()
    finally:
        configure_logging(0)
