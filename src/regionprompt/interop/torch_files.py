"""The one safe reader of PyTorch weight files from elsewhere: nothing in a file runs.

* ``torch.save`` files (zip or legacy pickle): ``torch.load(weights_only=True)`` only, optionally allowing
  plain numpy arrays (detectron2 pickles hold them) by naming only numpy's array-rebuilding functions;
  anything else needing a Python object is refused with a :class:`~regionprompt.errors.CheckpointError`
  that lists the objects. Zip archives are checked first (:func:`zip_member_names`): declared sizes are
  bounded before anything is inflated.
* TorchScript archives (OpenAI's CLIP ``.pt``): ``torch.jit.load`` would compile and run the archive's
  code, and ``weights_only`` refuses them, so :func:`read_torchscript_tensors` unpickles only ``data.pkl``
  with an allow-list unpickler (the "restricting globals" pattern of the Python ``pickle`` docs): every
  ``__torch__.*`` module becomes an inert attribute holder, tensors are rebuilt by our own bounds-checked
  function from the raw storage bytes, and any other global is refused. The code folder is never read.
* safetensors files.

What a file is comes from its first bytes, not its name; a file that is none of these is named by what
it looks like (an image, a text file...).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regionprompt.errors import CheckpointError
from regionprompt.untrusted import UnsafeArchiveError, check_zip_archive

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"  # pickle protocol marker: the legacy (pre-zip) torch.save format

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def describe_bytes(head: bytes) -> str:
    """What a file starting with ``head`` looks like, for "not a checkpoint, it is ..." messages."""
    if not head:
        return "an empty file"
    for magic, kind in (
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"\x89PNG", "a PNG image"),
        (b"GIF8", "a GIF image"),
        (b"%PDF", "a PDF document"),
        (b"\x1f\x8b", "a gzip archive"),
    ):
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "binary data of an unknown kind"


def file_head(path: Path, size: int = 16) -> bytes:
    """The first ``size`` bytes of a file (its format's magic number)."""
    with path.open("rb") as handle:
        return handle.read(size)


def is_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    return len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


class _ScriptObject:
    """Inert stand-in for a pickled TorchScript module: it only stores the attribute dict it is given."""

    def __init__(self, *args: Any) -> None:
        self.attributes: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _identity(value: Any, *_: Any) -> Any:
    return value


class _TorchScriptUnpickler(pickle.Unpickler):
    """Allow-list unpickler for a TorchScript archive's ``data.pkl``: no callable from the file runs."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.prefix = prefix
        self.source = source
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__.") or module == "__torch__":
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name.startswith(("build_", "restore_type_tag")):
            return _identity  # typed-container markers: the value itself is what we need
        raise CheckpointError(f"{self.source}: refusing to load {module}.{name} from a TorchScript archive")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.source}: unexpected persistent id {pid!r:.80} in TorchScript data")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.source}: unknown storage type in TorchScript data")
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}/data/{key}")
            except (KeyError, zipfile.BadZipFile, OSError, EOFError) as exc:
                raise CheckpointError(f"{self.source}: tensor data {key} unreadable (truncated file?): {exc}") from None
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                raise CheckpointError(f"{self.source}: tensor data {key} has {len(raw)} bytes, expected {numel * itemsize}")
            self.storages[key] = torch.frombuffer(bytearray(raw), dtype=storage_type.dtype) if raw else torch.empty(
                0, dtype=storage_type.dtype
            )
        return self.storages[key]

    def _rebuild_tensor(self, storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
        if not isinstance(storage, torch.Tensor):
            raise CheckpointError(f"{self.source}: malformed tensor record in TorchScript data")
        size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
        if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
            raise CheckpointError(f"{self.source}: malformed tensor layout {size} / {stride}")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
        if last >= storage.numel():
            raise CheckpointError(f"{self.source}: tensor layout {size} / {stride} exceeds its data")
        return torch.as_strided(storage, size, stride, offset).clone()


def _flatten_script_object(obj: _ScriptObject) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, _ScriptObject]] = [("", obj)]
    seen: set[int] = set()
    while stack:
        prefix, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for name, value in node.attributes.items():
            if isinstance(value, torch.Tensor):
                out[prefix + name] = value
            elif isinstance(value, _ScriptObject):
                stack.append((f"{prefix}{name}.", value))
    return out


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensor attributes of a TorchScript archive's module tree, by dotted name (no code executed)."""
    path = Path(path)
    zip_member_names(path)  # declared sizes checked before anything is inflated
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if not pickles:
                raise CheckpointError(f"{path}: zip archive without a data.pkl: not a PyTorch checkpoint")
            prefix = pickles[0].split("/")[0]
            root = _TorchScriptUnpickler(archive.read(pickles[0]), archive, prefix, path).load()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot read the TorchScript archive (truncated or corrupt?): {exc}") from None
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{path}: TorchScript archive does not hold a module")
    return _flatten_script_object(root)


def zip_member_names(path: Path) -> list[str]:
    """Member names of a zip-format checkpoint (PyTorch's ``torch.save`` or TorchScript archive), after
    checking the sizes its directory declares (:func:`~regionprompt.untrusted.check_zip_archive`): every
    zip checkpoint goes through here before ``torch.load`` or our TorchScript reader inflates anything."""
    try:
        return check_zip_archive(path)
    except UnsafeArchiveError as exc:
        raise CheckpointError(str(exc)) from None


def is_torchscript(names: list[str]) -> bool:
    """Whether zip member ``names`` are a TorchScript archive's (code and constants beside the data)."""
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def numpy_globals() -> list[Any]:
    """The numpy functions that rebuild plain arrays, under the names numpy 1 and 2 pickle them with.

    They only construct ndarrays from a dtype and raw bytes (no code from the file runs); object arrays
    would need further globals, which stay refused.
    """
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    out: list[Any] = [np.ndarray, np.dtype]
    # numpy 2 rebuilds each dtype as an instance of its own class (numpy.dtypes.Float32DType...): the numeric
    # and boolean ones only, so object arrays still fail.
    out += sorted({type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                                 np.uint32, np.uint64, np.float16, np.float32, np.float64,
                                                 np.complex64, np.complex128)}, key=lambda c: c.__name__)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out.append((multiarray._reconstruct, f"{module}._reconstruct"))
        out.append((multiarray.scalar, f"{module}.scalar"))
    return out


def torch_load(path: Path, *, numpy_arrays: bool) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; ``numpy_arrays``: also rebuild plain numpy arrays.

    Raises:
        CheckpointError: Python objects that weights_only refuses (listed), or unreadable data.
    """
    allowed = numpy_globals() if numpy_arrays else []
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 -- only zip files can be listed; the message below still says why
            unsafe = []
        names = {name for entry in allowed if isinstance(entry, tuple) for name in entry[1:]}
        names |= {f"{c.__module__}.{c.__qualname__}" for c in allowed if isinstance(c, type)}
        unsafe = [g for g in unsafe if g not in names]
        lines = [ln.strip() for ln in str(exc).splitlines() if "got <" in ln or "Unsupported global" in ln]
        what = ", ".join(unsafe[:5]) if unsafe else (lines[0][:200] if lines else "objects weights_only refuses")
        kinds = "tensors and numpy arrays" if numpy_arrays else "tensors"
        raise CheckpointError(
            f"{path}: holds Python objects other than {kinds} ({what}); refusing to unpickle them. Re-save only "
            "the weights in a Python you trust, e.g. "
            "torch.save(torch.load(FILE, weights_only=False)['model'], 'weights.pth')") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: cannot read the file (truncated or corrupt?): {str(exc)[:200]}") from None


def load_weights_only(path: str | Path) -> Any:
    """The object a ``torch.save`` file holds, read with ``torch.load(weights_only=True)`` (numpy arrays
    allowed, see the module docstring).

    Raises:
        CheckpointError: missing file, not a torch checkpoint (with a guess at what it is), a TorchScript
            archive, truncated data, or Python objects that weights_only refuses (listed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    head = file_head(path)
    if head.startswith(ZIP_MAGIC):
        names = zip_member_names(path)
        if is_torchscript(names):
            raise CheckpointError(f"{path}: a TorchScript archive (an OpenAI CLIP .pt?), not a RegionCLIP checkpoint; "
                                  "load OpenAI/open_clip files with regionprompt.interop.checkpoints.load_checkpoint")
        if not any(n.endswith("/data.pkl") for n in names):
            raise CheckpointError(f"{path}: a zip archive, but not a PyTorch checkpoint (no data.pkl)")
    elif not head.startswith(PICKLE_MAGIC):  # neither torch.save's zip format nor a (legacy) pickle
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, it is {describe_bytes(head)}")
    return torch_load(path, numpy_arrays=True)


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Raw tensors of a checkpoint file and its detected format.

    Returns ``(state, fmt)`` with ``fmt`` one of ``"torchscript"``, ``"torch"`` (``torch.save`` output),
    ``"safetensors"``. Keys are unchanged (see :func:`clean_state_dict`); only tensors are kept.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    head = file_head(path)
    if is_safetensors(head):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path))), "safetensors"
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {exc}") from None
    if head.startswith(ZIP_MAGIC):
        names = zip_member_names(path)
        if is_torchscript(names):
            return read_torchscript_tensors(path), "torchscript"
        if not any(n.endswith("/data.pkl") for n in names):
            raise CheckpointError(f"{path}: a zip archive, but not a PyTorch checkpoint (no data.pkl)")
        return _tensors_of(torch_load(path, numpy_arrays=False), path), "torch"
    if head.startswith(PICKLE_MAGIC):
        return _tensors_of(torch_load(path, numpy_arrays=False), path), "torch"
    raise CheckpointError(f"{path}: not a checkpoint, it is {describe_bytes(head)}")


def _tensors_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # open_clip training checkpoint: {"epoch", "name", "state_dict", "optimizer"}
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: contains no tensors (keys: {', '.join(map(str, list(obj)[:5]))})")
    return tensors
