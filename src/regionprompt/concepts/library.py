"""A named concept library in one SQLite file, shared safely by the server and the CLI.

Storage choice: each concept is one row; its tensors are kept *inside* the row as the bytes of a
concept file (:mod:`regionprompt.concepts.files`), not in files beside the database. One
transaction then covers a concept's name, metadata and embedding, so a crash or two writers can
never leave a row without its embedding or an orphaned file, and ``export`` is a plain copy of
the blob. Concepts are a few KiB, far below the size where SQLite blobs get slow.

Concurrency: the database runs in WAL mode (readers never block the writer), every connection
waits up to ``timeout`` seconds for a lock instead of failing (``busy_timeout``), and writes take
the write lock up front (``BEGIN IMMEDIATE``) so two writers queue instead of deadlocking. Each
call opens its own short-lived connection, so one :class:`ConceptLibrary` may be used from many
threads, and any number of processes may open the same file. WAL needs a local file system.

Names are unique without regard to ASCII case (``"Dog"`` and ``"dog"`` are the same concept).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from regionprompt.concept import PromptConcept
from regionprompt.concepts.files import (
    StoredConcept,
    concept_from_bytes,
    concept_to_bytes,
    read_concept_file,
    utc_now,
)
from regionprompt.data.files import atomic_write
from regionprompt.errors import RegionPromptError

HOME_ENV = "REGIONPROMPT_HOME"
SCHEMA_VERSION = 1
MAX_NAME_LENGTH = 200

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS concepts (
        name TEXT NOT NULL PRIMARY KEY COLLATE NOCASE,
        model_hash TEXT NOT NULL,
        dim INTEGER NOT NULL,
        num_negatives INTEGER NOT NULL,
        num_sources INTEGER NOT NULL,
        sources TEXT NOT NULL,  -- JSON list (also inside data): listing needs no decoding
        created TEXT NOT NULL,  -- ISO 8601 UTC
        data BLOB NOT NULL      -- the concept file's bytes (safetensors)
    )""",
)


class ConceptLibraryError(RegionPromptError):
    """The library file cannot be used (not a database, newer schema, locked for too long)."""


class ConceptNotFoundError(ConceptLibraryError):
    """No concept of that name in the library."""


class ConceptExistsError(ConceptLibraryError):
    """A concept of that name exists and ``replace`` was not asked for."""


class ConceptNameError(ConceptLibraryError):
    """A concept name that cannot be stored (empty, too long, control characters)."""


def regionprompt_home() -> Path:
    """``$REGIONPROMPT_HOME`` or ``~/.regionprompt``: where per-user state lives."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".regionprompt").expanduser()


def default_library_path() -> Path:
    """The default concept library, ``<home>/concepts.db`` (see :func:`regionprompt_home`)."""
    return regionprompt_home() / "concepts.db"


@dataclass(frozen=True)
class ConceptInfo:
    """One library entry without its tensors.

    Attributes:
        name: concept name as stored.
        model_hash: hash of the model that made it.
        created: ISO 8601 UTC creation time.
        num_sources: number of prompts (texts, boxes, points) it was made from.
        num_negatives: number of negative embeddings.
        dim: embedding dimension.
        sources: the prompt descriptions.
    """

    name: str
    model_hash: str
    created: str
    num_sources: int
    num_negatives: int
    dim: int
    sources: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sources"] = list(self.sources)
        return data


def check_name(name: str) -> str:
    """A usable concept name: trimmed, non-empty, printable, at most :data:`MAX_NAME_LENGTH` characters."""
    if not isinstance(name, str):
        raise ConceptNameError(f"concept name must be a string, got {type(name).__name__}")
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ConceptNameError("concept name is empty")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise ConceptNameError(f"concept name is {len(cleaned)} characters long; the limit is {MAX_NAME_LENGTH}")
    if not cleaned.isprintable():
        raise ConceptNameError(f"concept name {cleaned!r} contains control characters")
    return cleaned


class ConceptLibrary:
    """Named :class:`PromptConcept` s in a SQLite file (created on first use).

    Args:
        path: the database file; default :func:`default_library_path`.
        timeout: seconds to wait for another process's lock before giving up.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, timeout: float = 30.0) -> None:
        self.path = Path(path) if path is not None else default_library_path()
        self.timeout = float(timeout)
        self._ready = False

    def __repr__(self) -> str:
        return f"ConceptLibrary({str(self.path)!r})"

    # -- connections -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise ConceptLibraryError(f"{self.path}: is a directory, not a concept library file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below), not sqlite3's implicit ones.
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        if not self._ready:
            self._prepare(conn)
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConceptLibraryError(f"{self.path}: cannot switch the library to WAL mode (got {mode!r})")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise ConceptLibraryError(
                    f"{self.path}: library written by a newer RegionPrompt (schema {row[0]}; this version reads {SCHEMA_VERSION})"
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._ready = True

    @contextmanager
    def _connection(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection inside one transaction (``BEGIN IMMEDIATE`` for writes: take the write lock first)."""
        try:
            conn = self._open()
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        finally:
            conn.close()

    def _error(self, exc: sqlite3.DatabaseError) -> ConceptLibraryError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return ConceptLibraryError(f"{self.path}: concept library busy for more than {self.timeout:g} s ({text})")
        if "not a database" in text or "malformed" in text:
            return ConceptLibraryError(f"{self.path}: not a concept library, or a corrupt one ({text})")
        return ConceptLibraryError(f"{self.path}: concept library error: {text}")

    # -- reading -----------------------------------------------------------------------------

    @staticmethod
    def _info(row: tuple[Any, ...]) -> ConceptInfo:
        name, model_hash, created, num_sources, num_negatives, dim, sources = row
        return ConceptInfo(name, model_hash, created, int(num_sources), int(num_negatives), int(dim), tuple(json.loads(sources)))

    _INFO_COLUMNS = "name, model_hash, created, num_sources, num_negatives, dim, sources"

    def list(self, *, model_hash: str | None = None) -> list[ConceptInfo]:
        """All entries sorted by name (only those of ``model_hash`` when given)."""
        query = f"SELECT {self._INFO_COLUMNS} FROM concepts"
        params: tuple[Any, ...] = ()
        if model_hash is not None:
            query += " WHERE model_hash = ?"
            params = (model_hash,)
        with self._connection() as conn:
            rows = conn.execute(query + " ORDER BY name COLLATE NOCASE", params).fetchall()
        return [self._info(row) for row in rows]

    def names(self) -> list[str]:
        return [info.name for info in self.list()]

    def __len__(self) -> int:
        with self._connection() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM concepts").fetchone()[0])

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        with self._connection() as conn:
            return conn.execute("SELECT 1 FROM concepts WHERE name = ?", (" ".join(name.split()),)).fetchone() is not None

    def info(self, name: str) -> ConceptInfo:
        """The entry ``name`` without its tensors. Raises :class:`ConceptNotFoundError`."""
        with self._connection() as conn:
            row = conn.execute(f"SELECT {self._INFO_COLUMNS} FROM concepts WHERE name = ?", (check_name(name),)).fetchone()
        if row is None:
            raise self._not_found(name)
        return self._info(row)

    def get_stored(self, name: str) -> StoredConcept:
        """The concept ``name`` with its creation time. Raises :class:`ConceptNotFoundError`."""
        with self._connection() as conn:
            row = conn.execute("SELECT data FROM concepts WHERE name = ?", (check_name(name),)).fetchone()
        if row is None:
            raise self._not_found(name)
        return concept_from_bytes(bytes(row[0]), where=f"{self.path} [{name}]")

    def get(self, name: str) -> PromptConcept:
        """The concept ``name``. Raises :class:`ConceptNotFoundError`."""
        return self.get_stored(name).concept

    def _not_found(self, name: str) -> ConceptNotFoundError:
        names = self.names()
        hint = f"; the library has: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}" if names else "; the library is empty"
        return ConceptNotFoundError(f"no concept named {name!r} in {self.path}{hint}")

    # -- writing -----------------------------------------------------------------------------

    def add(self, concept: PromptConcept, *, replace: bool = False, created: str | None = None) -> ConceptInfo:
        """Store ``concept`` under its name.

        Args:
            replace: overwrite an existing concept of the same name instead of refusing.
            created: creation time to record (default: now).

        Raises:
            ConceptExistsError: the name is taken and ``replace`` is false.
        """
        name = check_name(concept.name)
        if name != concept.name:
            concept = concept.renamed(name)
        created = created or utc_now()
        data = concept_to_bytes(concept, created=created)
        sources = json.dumps(list(concept.sources), ensure_ascii=False, sort_keys=True)
        row = (name, concept.model_hash, concept.dim, int(concept.negatives.shape[0]), len(concept.sources), sources, created, data)
        with self._connection(write=True) as conn:
            exists = conn.execute("SELECT name FROM concepts WHERE name = ?", (name,)).fetchone()
            if exists and not replace:
                raise ConceptExistsError(f"a concept named {exists[0]!r} already exists in {self.path} (pass replace=True, or --replace on the command line, to overwrite)")
            if exists:
                conn.execute("DELETE FROM concepts WHERE name = ?", (name,))
            conn.execute(
                "INSERT INTO concepts (name, model_hash, dim, num_negatives, num_sources, sources, created, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        return ConceptInfo(name, concept.model_hash, created, len(concept.sources), int(concept.negatives.shape[0]), concept.dim, tuple(concept.sources))

    def remove(self, name: str) -> None:
        """Delete ``name``. Raises :class:`ConceptNotFoundError` when it is absent."""
        with self._connection(write=True) as conn:
            deleted = conn.execute("DELETE FROM concepts WHERE name = ?", (check_name(name),)).rowcount
        if not deleted:
            raise self._not_found(name)

    def export_bytes(self, name: str) -> bytes:
        """The concept file bytes of ``name`` (what :meth:`export` writes)."""
        with self._connection() as conn:
            row = conn.execute("SELECT data FROM concepts WHERE name = ?", (check_name(name),)).fetchone()
        if row is None:
            raise self._not_found(name)
        return bytes(row[0])

    def export(self, name: str, path: str | os.PathLike) -> Path:
        """Write concept ``name`` to a concept file at ``path`` (atomically); returns the path."""
        data = self.export_bytes(name)
        return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))

    def import_file(self, path: str | os.PathLike, *, replace: bool = False, name: str | None = None) -> ConceptInfo:
        """Add the concept in a concept file, keeping its creation time; ``name`` renames it.

        Raises:
            ConceptFileError: the file is not a valid concept file.
            ConceptExistsError: the name is taken and ``replace`` is false.
        """
        stored = read_concept_file(path)
        concept = stored.concept
        if name is not None:
            concept = concept.renamed(check_name(name))
        return self.add(concept, replace=replace, created=stored.created)
