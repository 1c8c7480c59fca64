"""Prompt embeddings with template ensembling and a persistent, process-safe cache.

:class:`PromptEmbedder` turns phrases into class embeddings the way RegionCLIP builds its concept embeddings:
fill every template, encode, L2-normalise each, average over templates, re-normalise.

:class:`EmbeddingCache` stores the finished per-phrase embeddings in SQLite, keyed by
``(encoder weights hash, template-set digest, normalised phrase)``. SQLite gives what the cache must guarantee:

- restarts: it is a file (default ``~/.cache/regionprompt/embeddings.sqlite``; ``$REGIONPROMPT_CACHE_DIR``
  or the ``path`` argument override it);
- concurrent writers: WAL mode, a busy timeout, and ``INSERT OR IGNORE`` (two processes computing the same
  key write the same vector; the first wins, the second is a no-op);
- a crash mid-write: every batch is one transaction, so a killed writer leaves either all or none of its rows;
- a corrupt file: the cache warns (:class:`EmbeddingCacheWarning`), moves the file aside and starts a fresh
  one; if even that fails it is bypassed (embeddings are recomputed, never wrong).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import unicodedata
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from regionprompt.errors import PromptError
from regionprompt.logging_utils import get_logger, progress
from regionprompt.vl.templates import TemplateSet, get_template_set
from regionprompt.vl.text import TextEncoder, check_texts

LOG = get_logger("vl.embeddings")

CACHE_FILENAME = "embeddings.sqlite"
# A new layout gets new table names instead of a migration. The long hashes live once in the namespace table so
# that a vector row (small int + phrase + blob) fits in one 4 KiB page without overflow pages up to 1000-d.
_NAMESPACES = "prompt_namespaces_v1"
_VECTORS = "prompt_vectors_v1"
_LOOKUP_CHUNK = 20_000  # phrases per SELECT; each chunk is one query whatever its size
_CORRUPTION_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class EmbeddingCacheWarning(RuntimeWarning):
    """The embedding cache was unusable (corrupt, locked for too long, unwritable) and was rebuilt or bypassed."""


def default_cache_dir() -> Path:
    """``$REGIONPROMPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/regionprompt``, else ``~/.cache/regionprompt``."""
    env = os.environ.get("REGIONPROMPT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "regionprompt"


def normalize_phrase(text: str) -> str:
    """Unicode NFC and single spaces, stripped. Case is kept: the encoder decides whether it matters."""
    phrase = " ".join(unicodedata.normalize("NFC", text).split())
    if not phrase:
        raise PromptError(f"empty text prompt {text!r}")
    return phrase


def mean_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` L2-normalised embeddings -> ``(D,)`` their re-normalised mean: several phrases or exemplars
    of one category, a mixed (text + visual) prompt. The one averaging rule of both detectors."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"need (N >= 1, D) embeddings, got {tuple(embeddings.shape)}")
    return F.normalize(embeddings.mean(dim=0), dim=-1)


@dataclass
class CacheStats:
    """Running counters of one :class:`EmbeddingCache` object (this process only)."""

    queries: int = 0  # SELECT statements issued
    hits: int = 0
    misses: int = 0
    written: int = 0  # rows offered to INSERT OR IGNORE
    transactions: int = 0


class EmbeddingCache:
    """Persistent store of float32 phrase embeddings; see the module docstring for the guarantees.

    One SQLite connection per object and process, guarded by a lock for threads. SQLite connections must not
    cross ``fork`` (DataLoader workers, multiprocessing): every open cache closes its connection just before a
    fork and re-opens lazily on both sides.
    """

    def __init__(self, path: str | Path | None = None, *, timeout_s: float = 60.0) -> None:
        self.path = Path(path).expanduser() if path is not None else default_cache_dir() / CACHE_FILENAME
        self.timeout_s = timeout_s
        self.stats = CacheStats()
        self.disabled_reason: str | None = None
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        _LIVE_CACHES.add(self)

    # -- connection -------------------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write batch is an explicit BEGIN IMMEDIATE.
        conn = sqlite3.connect(str(self.path), timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")  # the first statement that reads the header: garbage fails here
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable against process crashes
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_NAMESPACES} (id INTEGER PRIMARY KEY,"
                " encoder TEXT NOT NULL, templates TEXT NOT NULL, UNIQUE (encoder, templates))"
            )
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_VECTORS} (namespace INTEGER NOT NULL REFERENCES {_NAMESPACES}(id),"
                " phrase TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL, created REAL NOT NULL,"
                " PRIMARY KEY (namespace, phrase))"
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> sqlite3.Connection | None:
        if self.disabled_reason is not None:
            return None
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # A connection inherited through fork must not be used by the child; open a fresh one.
        self._conn = None
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                self._disable(f"cannot open {self.path}: {exc}")
                return None
            self._rebuild(exc)
        except OSError as exc:
            self._disable(f"cannot create {self.path}: {exc}")
            return None
        self._pid = os.getpid()
        return self._conn

    def _rebuild(self, exc: BaseException) -> None:
        """Move a corrupt file aside (kept for inspection) and start an empty cache in its place."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        # Another process may already have replaced the corrupt file; moving ITS fresh cache aside would
        # orphan its connection, so reuse the file if it now passes SQLite's structural check.
        try:
            conn = self._open()
            try:
                sound = conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            except sqlite3.DatabaseError:
                sound = False
            if sound:
                self._conn, self._pid = conn, os.getpid()
                return
            conn.close()
        except sqlite3.DatabaseError:
            pass  # not even openable: it is moved aside below like any other corrupt file
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}-{os.getpid()}")
        warnings.warn(
            f"embedding cache {self.path} is corrupt ({exc}); moved it to {aside} and starting an empty cache",
            EmbeddingCacheWarning,
            stacklevel=4,
        )
        try:
            if self.path.exists():
                os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._conn = self._open()
            self._pid = os.getpid()
        except (OSError, sqlite3.Error) as again:
            self._disable(f"cannot rebuild {self.path}: {again}")

    def _disable(self, reason: str) -> None:
        self.disabled_reason = reason
        self._conn = None
        warnings.warn(f"embedding cache bypassed: {reason}", EmbeddingCacheWarning, stacklevel=4)

    def _handle(self, exc: sqlite3.Error, action: str) -> None:
        if isinstance(exc, sqlite3.DatabaseError) and _is_corruption(exc):
            self._rebuild(exc)
        else:
            warnings.warn(f"embedding cache {self.path}: {action} failed ({exc})", EmbeddingCacheWarning, stacklevel=4)

    def close(self) -> None:
        """Close this process's connection (it is re-opened on the next use)."""
        with self._lock:
            self._close_unlocked()

    def _close_unlocked(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads and writes -------------------------------------------------------------------------------------
    def get_many(self, encoder_hash: str, templates_hash: str, phrases: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors for those of ``phrases`` present: ``{phrase: (D,) float32}``.

        One SELECT per 20,000 phrases (the phrase list travels as one JSON parameter), so a whole vocabulary
        is one round trip. Unreadable rows count as misses.
        """
        wanted = list(dict.fromkeys(phrases))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            conn = self._connection()
            if conn is None or not wanted:
                self.stats.misses += len(wanted)
                return found
            try:
                for start in range(0, len(wanted), _LOOKUP_CHUNK):
                    chunk = wanted[start : start + _LOOKUP_CHUNK]
                    rows = conn.execute(
                        f"SELECT v.phrase, v.dim, v.vector FROM {_VECTORS} v JOIN {_NAMESPACES} n"
                        " ON v.namespace = n.id WHERE n.encoder = ? AND n.templates = ?"
                        " AND v.phrase IN (SELECT value FROM json_each(?))",
                        (encoder_hash, templates_hash, json.dumps(chunk, ensure_ascii=False)),
                    ).fetchall()
                    self.stats.queries += 1
                    found.update(_decode_rows(rows))
            except sqlite3.Error as exc:
                self._handle(exc, "lookup")
                found = {}
        self.stats.hits += len(found)
        self.stats.misses += len(wanted) - len(found)
        return found

    def put_many(
        self,
        encoder_hash: str,
        templates_hash: str,
        vectors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    ) -> None:
        """Store ``{phrase: (D,) vector}`` in ONE transaction (all rows or none); existing keys are kept."""
        items = vectors.items() if isinstance(vectors, Mapping) else vectors
        now = time.time()
        count = 0

        def rows(namespace: int) -> Iterable[tuple[int, str, int, bytes, float]]:
            nonlocal count
            for phrase, vector in items:
                data = np.ascontiguousarray(np.asarray(vector, dtype="<f4").reshape(-1))
                count += 1
                yield namespace, phrase, int(data.size), data.tobytes(), now

        with self._lock:
            conn = self._connection()
            if conn is None:
                return
            try:
                with _write_transaction(conn):
                    key = (encoder_hash, templates_hash)
                    conn.execute(f"INSERT OR IGNORE INTO {_NAMESPACES} (encoder, templates) VALUES (?, ?)", key)
                    sql = f"SELECT id FROM {_NAMESPACES} WHERE encoder = ? AND templates = ?"
                    namespace = int(conn.execute(sql, key).fetchone()[0])
                    conn.executemany(
                        f"INSERT OR IGNORE INTO {_VECTORS} (namespace, phrase, dim, vector, created)"
                        " VALUES (?, ?, ?, ?, ?)",
                        rows(namespace),
                    )
            except sqlite3.Error as exc:
                self._handle(exc, "write")
                return
            self.stats.transactions += 1
            self.stats.written += count

    def count(self, encoder_hash: str | None = None) -> int:
        """Number of stored vectors (all, or those of one encoder)."""
        with self._lock:
            conn = self._connection()
            if conn is None:
                return 0
            try:
                if encoder_hash is None:
                    return int(conn.execute(f"SELECT COUNT(*) FROM {_VECTORS}").fetchone()[0])
                sql = (
                    f"SELECT COUNT(*) FROM {_VECTORS} WHERE namespace IN"
                    f" (SELECT id FROM {_NAMESPACES} WHERE encoder = ?)"
                )
                return int(conn.execute(sql, (encoder_hash,)).fetchone()[0])
            except sqlite3.Error as exc:
                self._handle(exc, "count")
                return 0

    def clear(self, encoder_hash: str | None = None) -> None:
        """Delete all vectors, or those of one encoder (e.g. after retraining)."""
        with self._lock:
            conn = self._connection()
            if conn is None:
                return
            try:
                selected = f"SELECT id FROM {_NAMESPACES}" + (" WHERE encoder = ?" if encoder_hash else "")
                params = (encoder_hash,) if encoder_hash else ()
                with _write_transaction(conn):
                    conn.execute(f"DELETE FROM {_VECTORS} WHERE namespace IN ({selected})", params)
                    conn.execute(f"DELETE FROM {_NAMESPACES} WHERE id IN ({selected})", params)
            except sqlite3.Error as exc:
                self._handle(exc, "clear")


_LIVE_CACHES: weakref.WeakSet[EmbeddingCache] = weakref.WeakSet()


def _close_before_fork() -> None:
    # Holding each lock while closing also keeps the fork out of the middle of a transaction.
    for cache in list(_LIVE_CACHES):
        with cache._lock:
            cache._close_unlocked()


os.register_at_fork(before=_close_before_fork)


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """All statements inside commit together or not at all. BEGIN IMMEDIATE takes the write lock up front
    (waiting up to the busy timeout), so two writers never deadlock upgrading a read lock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one worth reporting; SQLite rolls back on close anyway
        raise


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPTION_CODES
    return type(exc) is sqlite3.DatabaseError


def _decode_rows(rows: list[tuple[object, object, object]]) -> dict[str, np.ndarray]:
    """``{phrase: (dim,) float32}`` from (phrase, dim, blob) rows; malformed or non-finite rows are dropped.
    Rows of equal width are decoded as one array (one copy instead of one per row)."""
    by_dim: dict[int, list[tuple[str, bytes]]] = {}
    for phrase, dim, blob in rows:
        if not (isinstance(phrase, str) and isinstance(dim, int) and isinstance(blob, bytes)):
            continue
        if dim > 0 and len(blob) == 4 * dim:
            by_dim.setdefault(dim, []).append((phrase, blob))
    out: dict[str, np.ndarray] = {}
    for dim, items in by_dim.items():
        matrix = np.frombuffer(b"".join(blob for _, blob in items), dtype="<f4").reshape(len(items), dim)
        matrix = matrix.astype(np.float32)
        for (phrase, _), vector, finite in zip(items, matrix, np.isfinite(matrix).all(axis=1)):
            if finite:
                out[phrase] = vector
    return out


@dataclass(frozen=True)
class EmbedStats:
    """What one :meth:`PromptEmbedder.embed` call did."""

    phrases: int  # phrases asked for
    unique: int  # distinct normalised phrases
    cache_hits: int
    computed: int  # phrases run through the encoder
    encoder_calls: int  # encode_text batches


class PromptEmbedder:
    """Phrases -> template-ensembled, L2-normalised embeddings, with an optional persistent cache.

    Args:
        encoder: any :class:`~regionprompt.vl.text.TextEncoder`.
        templates: a template-set name (``"regionclip81"``, ``"single"``, ``"emoji"``), a
            :class:`TemplateSet`, or a list of templates with one ``{}`` each.
        cache: where finished embeddings persist; ``None`` computes every call.
        batch_size: filled templates per ``encode_text`` call.
        flush_every: computed phrases buffered before one cache transaction (progress survives interruption).
    """

    def __init__(
        self,
        encoder: TextEncoder,
        templates: str | TemplateSet | Sequence[str] = "regionclip81",
        cache: EmbeddingCache | None = None,
        *,
        batch_size: int = 256,
        flush_every: int = 512,
    ) -> None:
        self.encoder = encoder
        self.templates = get_template_set(templates)
        self.cache = cache
        self.batch_size = batch_size
        self.flush_every = flush_every
        self.last_stats: EmbedStats | None = None

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.embed_dim)

    def embed(self, phrases: Sequence[str]) -> torch.Tensor:
        """``(N, embed_dim)`` float32 CPU tensor, rows L2-normalised, in the order of ``phrases``.

        Phrases are normalised (:func:`normalize_phrase`) before lookup and encoding; duplicates cost once.
        """
        names = [normalize_phrase(p) for p in check_texts(phrases)]
        unique = list(dict.fromkeys(names))
        found: dict[str, np.ndarray] = {}
        encoder_hash = ""
        if self.cache is not None and unique:
            encoder_hash = self.encoder.weights_hash()
            shape = (self.embed_dim,)
            cached = self.cache.get_many(encoder_hash, self.templates.digest, unique)
            found = {phrase: vector for phrase, vector in cached.items() if vector.shape == shape}
        hits = len(found)
        missing = [p for p in unique if p not in found]
        calls = self._compute(missing, found, encoder_hash) if missing else 0
        self.last_stats = EmbedStats(len(names), len(unique), hits, len(missing), calls)
        if not names:
            return torch.zeros(0, self.embed_dim)
        return torch.from_numpy(np.stack([found[p] for p in names]))

    __call__ = embed

    def _compute(self, phrases: list[str], out: dict[str, np.ndarray], encoder_hash: str) -> int:
        """Encode ``phrases`` into ``out``, storing them in the cache every ``flush_every`` phrases."""
        n_templates = len(self.templates)
        per_chunk = max(1, self.batch_size // n_templates)  # whole phrases per chunk keep the mean local
        pending: dict[str, np.ndarray] = {}
        calls = 0
        chunks = [phrases[i : i + per_chunk] for i in range(0, len(phrases), per_chunk)]
        # One chunk (a few phrases, e.g. one detect call's prompts) is too quick to deserve a bar.
        steps = progress(chunks, desc=f"embedding prompts x{n_templates} templates", unit="chunk") if len(chunks) > 1 else chunks
        for chunk in steps:
            texts = [text for phrase in chunk for text in self.templates.fill(phrase)]
            parts = []
            for start in range(0, len(texts), self.batch_size):
                with torch.no_grad():
                    encoded = self.encoder.encode_text(texts[start : start + self.batch_size])
                parts.append(encoded.detach().float().cpu())
                calls += 1
            per_template = F.normalize(torch.cat(parts), dim=-1).view(len(chunk), n_templates, -1)
            ensembled = F.normalize(per_template.mean(dim=1), dim=-1).numpy()
            for phrase, vector in zip(chunk, ensembled):
                out[phrase] = vector
                pending[phrase] = vector
            if self.cache is not None and len(pending) >= self.flush_every:
                self.cache.put_many(encoder_hash, self.templates.digest, pending)
                pending = {}
        if self.cache is not None and pending:
            self.cache.put_many(encoder_hash, self.templates.digest, pending)
        return calls
