"""The fenced code blocks of README.md and docs/*.md, and a runner that executes the runnable ones.

Every ``bash`` or ``python`` block is preceded (on the line before its fence) by a marker:

* ``<!-- run -->``: tests/test_docs.py runs it, in order with the file's other runnable blocks, in one
  fresh folder (so a block may use the files an earlier block of the same page made);
* ``<!-- not run: REASON -->``: not run, for the reason given (weights that are not shipped, hours of
  training, a server that must be running, ...).

Run one page by hand (``REGIONPROMPT_DEFAULT_MODEL`` picks the model that ``"default"`` means)::

    python tests/doc_snippets.py docs/api.md /tmp/docrun

Bash lines that are a plain ``regionprompt ...`` command run in this process (``regionprompt.cli.main``),
which saves the start-up of one Python process per command; every other line runs in ``bash``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "notebook").glob("*.md"))]
RUN = "<!-- run -->"
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>.+?) -->")
FENCE = re.compile(r"^(?P<quote>>\s?)?(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
SHELL_SYNTAX = re.compile(r"[|&;<>$`()*?\[\]]")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its code and its marker."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # "run", "not run: REASON", or None (unmarked)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file (blockquoted ones too, ``> ```bash``)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        quote = bool(match["quote"])
        j = i + 1
        body = []
        while j < len(lines) and not lines[j].lstrip("> " if quote else " ").startswith("```"):
            text = lines[j]
            if quote:
                text = re.sub(r"^>\s?", "", text)
            body.append(text[len(match["indent"]):] if text.startswith(match["indent"]) else text)
            j += 1
        previous = lines[i - 1].strip().lstrip(">").strip() if i else ""
        marker = "run" if previous == RUN else (f"not run: {m['reason']}" if (m := NOT_RUN.fullmatch(previous)) else None)
        blocks.append(Block(path, i + 1, match["lang"], "\n".join(body) + "\n", marker))
        i = j + 1
    return blocks


def shell_lines(code: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, blank and comment-only lines dropped."""
    commands, current = [], ""
    for raw in code.splitlines():
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip() and not current.strip().startswith("#"):
            commands.append(current.strip())
        current = ""
    return commands


def _run_shell_line(line: str, bin_dir: Path) -> None:
    words = shlex.split(line, comments=True)
    without_comment = shlex.join(words)
    if words and words[0] == "regionprompt" and not SHELL_SYNTAX.search(without_comment):
        from regionprompt.cli import main

        try:
            code = main(words[1:])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        if code != 0:
            raise RuntimeError(f"exit status {code}: {line}")
        return
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", line], env=env, text=True, capture_output=True)
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        raise RuntimeError(f"exit status {result.returncode}: {line}\n{result.stderr}")


def run_page(path: Path, workdir: Path) -> int:
    """Run the page's runnable blocks in order inside ``workdir``; 0 when all pass, else 1 (and say where)."""
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    bin_dir = workdir / ".bin"
    bin_dir.mkdir(exist_ok=True)
    for name, module in (("regionprompt", "regionprompt"), ("python", None)):
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {'-m ' + module if module else ''} \"$@\"\n")
        shim.chmod(0o755)
    for block in read_blocks(path):
        if block.marker != "run":
            continue
        print(f"--- {block.where} ({block.lang})", flush=True)
        try:
            if block.lang == "python":
                exec(compile(block.code, block.where, "exec"), {"__name__": "__main__"})
            elif block.lang == "bash":
                for line in shell_lines(block.code):
                    _run_shell_line(line, bin_dir)
            else:
                raise RuntimeError(f"cannot run a {block.lang!r} block")
        except Exception:  # noqa: BLE001 - report any failure with the block's location
            print(f"FAILED {block.where}:\n{block.code}", file=sys.stderr)
            traceback.print_exc()
            return 1
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(run_page(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()))
