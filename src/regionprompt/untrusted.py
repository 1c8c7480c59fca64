"""Guards for reading input we did not write: names that become paths, JSON, YAML and zip archives.

Every entry point (CLI, Python API, dataset tools, checkpoint and concept loading, the REST server)
reads files and fields that may be hostile. The checks here turn what would otherwise be a write
outside the output folder, a memory blow-up or a traceback into one :class:`RegionPromptError` naming
the file or field. Kept free of torch, PIL and yaml at import time: the CLI and the server import it early.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from regionprompt.errors import RegionPromptError

#: Most characters of a name that becomes a path (split, file name, ...); file systems stop at 255 per part.
MAX_NAME_LENGTH = 1024
#: Most nodes a YAML document may expand to once its aliases are followed. A COCO/LVIS ``data.yaml``
#: has a few thousand; a "billion laughs" file expands to 10**9 from a few hundred bytes.
MAX_YAML_NODES = 1_000_000
#: Largest YAML file read at all (``data.yaml`` is a few KiB).
MAX_YAML_BYTES = 16 << 20
#: Most a zip member may declare per compressed byte. Weights barely compress (about 1.1x); a zip bomb
#: declares thousands of times its size. Members up to :data:`SMALL_MEMBER_BYTES` are exempt.
MAX_ZIP_RATIO = 20
SMALL_MEMBER_BYTES = 1 << 20
#: Largest ``data.pkl`` (the pickled module tree, not the tensor data) of a PyTorch archive: OpenAI's
#: ViT-L/14 has well under 1 MiB.
MAX_PICKLE_BYTES = 64 << 20


class UnsafePathError(RegionPromptError, ValueError):
    """A name that would become a path leaves its folder (``..``, absolute, drive, NUL or backslash)."""


class UnsafeArchiveError(RegionPromptError):
    """A zip archive declares more data than it can plausibly hold (a zip bomb) or is not a zip at all."""


# ---- names that become paths --------------------------------------------------------------------


def check_path_name(name: Any, *, what: str, single: bool = False) -> str:
    """``name`` if it is a relative ``/``-separated path that stays inside its folder, else
    :class:`UnsafePathError` naming ``what`` (e.g. ``"--split"``).

    ``single``: one path component only (a folder name such as a split), no ``/`` at all.
    Checked lexically: a symlink the folder's owner put there is theirs to follow; what we refuse are
    names from input files and requests that climb out (``../``), start at the root, or carry a NUL.
    """
    if not isinstance(name, str):
        raise UnsafePathError(f"{what} must be a string, got {type(name).__name__}")
    problem = None
    if not name or name in (".", ".."):
        problem = "is empty" if not name else "is not a name"
    elif len(name) > MAX_NAME_LENGTH:
        problem = f"is longer than {MAX_NAME_LENGTH} characters"
    elif "\x00" in name or "\\" in name:
        problem = "contains a NUL or a backslash"
    else:
        pure = PurePosixPath(name)
        if pure.is_absolute():
            problem = "is an absolute path"
        elif ".." in pure.parts:
            problem = "climbs out of its folder with '..'"
        elif ":" in pure.parts[0]:
            problem = "starts with a drive or URL prefix"
        elif single and (len(pure.parts) != 1 or "/" in name):
            problem = "must be a single folder name (no '/')"
    if problem:
        raise UnsafePathError(f"{what} {name[:200]!r} {problem}; it must stay inside its folder")
    return name


def safe_child(folder: str | os.PathLike, name: Any, *, what: str, single: bool = False) -> Path:
    """``folder / name`` after :func:`check_path_name`: the one place untrusted names become paths."""
    return Path(folder) / check_path_name(name, what=what, single=single)


def display_name(name: Any, *, default: str, max_length: int = 120) -> str:
    """An uploaded file's name as safe to show (and never to use as a path): its last component, control
    characters dropped, at most ``max_length`` characters; ``default`` when nothing is left."""
    if not isinstance(name, str):
        return default
    last = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in last if c.isprintable())[:max_length]
    return cleaned if cleaned.strip(" .") else default


# ---- JSON ---------------------------------------------------------------------------------------


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` whose every failure is a :class:`json.JSONDecodeError` (a ``ValueError``).

    Python's parser raises ``RecursionError`` on deeply nested arrays and a plain ``ValueError`` on
    integers of more than 4300 digits; callers that catch ``JSONDecodeError`` would let both through
    as tracebacks (or HTTP 500).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", _as_str(text), 0) from None
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"not UTF-8 text ({exc.reason})", "", exc.start) from None
    except ValueError as exc:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise json.JSONDecodeError(str(exc).split(";")[0], _as_str(text), 0) from None


def _as_str(text: str | bytes) -> str:
    # JSONDecodeError computes line/column from the document; bytes would break that.
    return text if isinstance(text, str) else ""


# ---- YAML ---------------------------------------------------------------------------------------


def load_yaml(text: str, *, max_nodes: int = MAX_YAML_NODES) -> Any:
    """Parse YAML like ``yaml.safe_load`` (no Python tags), refusing documents whose aliases expand to
    more than ``max_nodes`` nodes. ``safe_load`` shares aliased nodes, but anything that walks the result
    (``repr``, a loop over names) pays for the full expansion.

    Raises:
        yaml.YAMLError: invalid YAML, a Python tag, or too large an expansion (a ``yaml.YAMLError``
            too, so callers handle all three alike).
    """
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # the composer recurses once per nesting level
            raise yaml.YAMLError("the document is nested too deeply") from None
        if node is None:
            return None
        try:
            size = _expanded_size(node, {})
        except RecursionError:
            raise yaml.YAMLError("the document is nested too deeply") from None
        if size > max_nodes:
            raise yaml.YAMLError(f"the document expands to {size:,} nodes through its aliases "
                                 f"(the limit is {max_nodes:,}); is it a 'billion laughs' file?")
        try:
            return loader.construct_document(node)
        except RecursionError:
            raise yaml.YAMLError("the document is nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Nodes ``node`` stands for with every alias followed; each distinct node is visited once, so this
    is linear in the file even when the expansion is exponential. A recursive alias counts as huge."""
    import yaml

    key = id(node)
    if key in memo:
        if memo[key] < 0:  # still being computed: the node contains itself
            return MAX_YAML_NODES + 1
        return memo[key]
    memo[key] = -1
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            total += _expanded_size(child, memo)
            if total > MAX_YAML_NODES:
                break
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            total += _expanded_size(key_node, memo) + _expanded_size(value_node, memo)
            if total > MAX_YAML_NODES:
                break
    memo[key] = total
    return total


# ---- zip archives (torch.save and TorchScript files) ---------------------------------------------


def check_zip_archive(path: str | os.PathLike) -> list[str]:
    """The member names of zip archive ``path`` after checking the sizes its directory declares,
    before anything is inflated: each member at most :data:`MAX_ZIP_RATIO` times its compressed size
    (small members exempt), the pickles at most :data:`MAX_PICKLE_BYTES`, and the whole at most
    ``MAX_ZIP_RATIO`` times the file. ``zipfile`` never inflates past a member's declared size, so
    these bounds hold for what is actually read.

    Raises:
        UnsafeArchiveError: not a readable zip archive, or a declared size beyond the bounds.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise UnsafeArchiveError(f"{path}: cannot read the zip archive (truncated or corrupt?): {exc}") from None
    file_size = path.stat().st_size
    total = 0
    for info in infos:
        declared = info.file_size
        total += declared
        if info.filename.endswith(".pkl") and declared > MAX_PICKLE_BYTES:
            raise UnsafeArchiveError(f"{path}: member {info.filename} declares {declared:,} bytes; a pickle of "
                                     f"weights is far smaller (limit {MAX_PICKLE_BYTES:,}): refusing to inflate it")
        if declared > SMALL_MEMBER_BYTES and declared > MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise UnsafeArchiveError(f"{path}: member {info.filename} declares {declared:,} bytes from "
                                     f"{info.compress_size:,} compressed (a zip bomb?): refusing to inflate it")
    if total > MAX_ZIP_RATIO * file_size + SMALL_MEMBER_BYTES * 16:
        raise UnsafeArchiveError(f"{path}: the archive declares {total:,} bytes in a {file_size:,}-byte file "
                                 "(a zip bomb?): refusing to inflate it")
    return [info.filename for info in infos]
