"""Prompt templates, template ensembling and the persistent embedding cache (restarts, concurrency, crashes,
corruption). A small deterministic fake encoder stands in for a text tower so every expectation is exact."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from regionprompt.errors import PromptError
from regionprompt.vl.embeddings import (
    CACHE_FILENAME,
    EmbeddingCache,
    EmbeddingCacheWarning,
    PromptEmbedder,
    default_cache_dir,
    normalize_phrase,
)
from regionprompt.vl.templates import TEMPLATE_SET_NAMES, TemplateSet, fill, get_template_set, template_set_hash
from regionprompt.vl.text import TextEncoder

FORK = mp.get_context("fork")
DIM = 8


class FakeEncoder:
    """Deterministic text -> unit vector (seeded by the text and ``version``); records every call."""

    def __init__(self, version: str = "v1", dim: int = DIM) -> None:
        self.embed_dim = dim
        self.version = version
        self.calls: list[list[str]] = []

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        rows = [np.random.default_rng(_seed(self.version + "|" + t)).normal(size=self.embed_dim) for t in texts]
        out = torch.tensor(np.array(rows).reshape(len(texts), self.embed_dim), dtype=torch.float32)
        return F.normalize(out, dim=-1)

    def weights_hash(self) -> str:
        return hashlib.sha256(self.version.encode()).hexdigest()


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _vector(key: str) -> np.ndarray:
    return np.random.default_rng(_seed(key)).normal(size=DIM).astype(np.float32)


TEMPLATES = ["a {}.", "a photo of a {}.", "{}"]


def _run_in_process(target, *args: object) -> int | None:
    """Run ``target(*args)`` in a forked process; its exit code."""
    proc = FORK.Process(target=target, args=args)
    proc.start()
    proc.join(60)
    return proc.exitcode


# -- templates -------------------------------------------------------------------------------------------------
def test_regionclip_templates_are_the_81_shipped_ones(shared_data: Path) -> None:
    ts = get_template_set("regionclip81")
    source = json.loads((shared_data / "metadata" / "regionclip_prompt_templates.json").read_text())["templates"]
    assert len(ts) == 81 and list(ts.templates) == source
    assert ts.fill("dog")[:2] == ["dog.", "a photo of a dog."]
    assert fill("single", "red car") == ["red car"]
    assert all("{}" in t for t in get_template_set("emoji").templates)
    assert set(TEMPLATE_SET_NAMES) == {"regionclip81", "single", "emoji"}


def test_template_hash_depends_on_content_only() -> None:
    assert template_set_hash("single") == TemplateSet("other name", ("{}",)).digest
    assert template_set_hash(TEMPLATES) == template_set_hash(list(TEMPLATES))
    assert template_set_hash(TEMPLATES) != template_set_hash(TEMPLATES[::-1])
    assert len({template_set_hash(name) for name in TEMPLATE_SET_NAMES}) == 3


@pytest.mark.parametrize("bad", [[], ["no placeholder"], ["{} and {}"], ["a {0}"], ["a {} {"]])
def test_bad_template_sets_are_rejected(bad: list[str]) -> None:
    with pytest.raises(PromptError):
        get_template_set(bad)
    with pytest.raises(PromptError, match="unknown template set"):
        get_template_set("nope")


def test_braces_in_phrases_are_filled_literally() -> None:
    assert fill(["a {}."], "x {0} y") == ["a x {0} y."]


# -- ensembling ------------------------------------------------------------------------------------------------
def test_fake_encoder_satisfies_protocol() -> None:
    assert isinstance(FakeEncoder(), TextEncoder)


def test_ensembling_equals_manual_computation() -> None:
    enc = FakeEncoder()
    out = PromptEmbedder(enc, TEMPLATES).embed(["dog", "red car"])
    assert out.shape == (2, DIM) and out.dtype == torch.float32
    reference = FakeEncoder()
    for row, phrase in zip(out, ["dog", "red car"]):
        per_template = F.normalize(reference.encode_text([t.format(phrase) for t in TEMPLATES]), dim=-1)
        expected = F.normalize(per_template.mean(0), dim=0)
        torch.testing.assert_close(row, expected)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    # each phrase got all three templates
    assert sorted(t for call in enc.calls for t in call) == sorted(t.format(p) for p in ["dog", "red car"] for t in TEMPLATES)


def test_batching_does_not_change_results_and_respects_batch_size() -> None:
    phrases = [f"thing {i}" for i in range(7)]
    small = FakeEncoder()
    a = PromptEmbedder(small, TEMPLATES, batch_size=4).embed(phrases)
    b = PromptEmbedder(FakeEncoder(), TEMPLATES, batch_size=256).embed(phrases)
    torch.testing.assert_close(a, b)
    assert max(len(c) for c in small.calls) <= 4
    many = PromptEmbedder(FakeEncoder(), get_template_set("regionclip81"), batch_size=256)
    many.embed(phrases)
    assert many.last_stats is not None and many.last_stats.encoder_calls == 3  # chunks of 3 phrases x 81 = 243 texts


def test_phrase_normalisation_duplicates_and_empty_inputs() -> None:
    enc = FakeEncoder()
    embedder = PromptEmbedder(enc, "single")
    out = embedder.embed(["  dog ", "dog", "hot\tdog"])
    torch.testing.assert_close(out[0], out[1])
    assert embedder.last_stats is not None and embedder.last_stats.computed == 2
    assert normalize_phrase(" hot \n dog ") == "hot dog"
    assert embedder.embed([]).shape == (0, DIM)
    with pytest.raises(PromptError, match="empty"):
        embedder.embed(["dog", "  "])
    with pytest.raises(PromptError, match="single string"):
        embedder.embed("dog")


# -- cache: hits, restarts, keys ------------------------------------------------------------------------------
def test_second_call_and_restart_do_not_call_the_encoder(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    phrases = [f"class {i}" for i in range(1203)]
    enc = FakeEncoder()
    cache = EmbeddingCache(path)
    embedder = PromptEmbedder(enc, TEMPLATES, cache)
    first = embedder.embed(phrases)
    n_calls = len(enc.calls)
    queries = cache.stats.queries
    second = embedder.embed(phrases[::-1])
    assert len(enc.calls) == n_calls  # all hits
    assert cache.stats.queries - queries == 1  # the whole vocabulary in one SELECT
    torch.testing.assert_close(second, first.flip(0), rtol=0, atol=0)
    cache.close()

    fresh = FakeEncoder()  # "restart": new encoder object, new cache object, same file
    again = PromptEmbedder(fresh, TEMPLATES, EmbeddingCache(path)).embed(phrases)
    assert fresh.calls == []
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_cache_key_includes_weights_hash_and_templates(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    v1 = PromptEmbedder(FakeEncoder("v1"), TEMPLATES, cache).embed(["dog", "cat"])
    retrained = FakeEncoder("v2")
    v2 = PromptEmbedder(retrained, TEMPLATES, cache).embed(["dog", "cat"])
    assert len(retrained.calls) > 0 and not torch.allclose(v1, v2)  # no stale hit from v1
    other_templates = FakeEncoder("v1")
    PromptEmbedder(other_templates, "single", cache).embed(["dog"])
    assert len(other_templates.calls) == 1
    assert cache.count() == 5
    assert cache.count(FakeEncoder("v2").weights_hash()) == 2
    cache.clear(FakeEncoder("v2").weights_hash())
    assert cache.count() == 3


def test_default_location_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIONPROMPT_CACHE_DIR", str(tmp_path / "cachedir"))
    assert default_cache_dir() == tmp_path / "cachedir"
    cache = EmbeddingCache()
    assert cache.path == tmp_path / "cachedir" / CACHE_FILENAME
    PromptEmbedder(FakeEncoder(), "single", cache).embed(["dog"])
    assert cache.path.is_file()
    monkeypatch.delenv("REGIONPROMPT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "regionprompt"


# -- concurrency and crashes ----------------------------------------------------------------------------------
def _writer(path: str, worker: int, n_batches: int) -> None:
    warnings.simplefilter("error", EmbeddingCacheWarning)  # a lock timeout must fail the test, not pass silently
    cache = EmbeddingCache(path)
    for b in range(n_batches):
        # Overlapping keys: every worker writes key i with the same value, in a different order.
        keys = [f"k{(b * 7 + worker * 13 + j) % 200}" for j in range(25)]
        cache.put_many("enc", "tpl", {k: _vector(k) for k in keys})
        found = cache.get_many("enc", "tpl", keys)
        assert set(found) == set(keys)
    embedder = PromptEmbedder(FakeEncoder(), TEMPLATES, cache)
    embedder.embed([f"shared {i}" for i in range(30)])


def test_concurrent_writers_overlapping_keys(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sqlite")
    procs = [FORK.Process(target=_writer, args=(path, w, 100)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    cache = EmbeddingCache(path)
    keys = [f"k{i}" for i in range(200)]
    found = cache.get_many("enc", "tpl", keys)
    written = {f"k{(b * 7 + w * 13 + j) % 200}" for w in range(3) for b in range(100) for j in range(25)}
    assert set(found) == written
    for k in written:
        np.testing.assert_array_equal(found[k], _vector(k))
    enc = FakeEncoder()
    reference = PromptEmbedder(FakeEncoder(), TEMPLATES).embed([f"shared {i}" for i in range(30)])
    torch.testing.assert_close(PromptEmbedder(enc, TEMPLATES, cache).embed([f"shared {i}" for i in range(30)]), reference)
    assert enc.calls == []


def _crash_mid_transaction(path: str) -> None:
    cache = EmbeddingCache(path)
    cache.put_many("enc", "tpl", {f"ok{i}": _vector(f"ok{i}") for i in range(20)})

    def rows():
        for i in range(1000):
            if i == 500:
                os._exit(3)  # die inside the transaction, after 500 rows were inserted but before COMMIT
            yield f"lost{i}", _vector(f"lost{i}")

    cache.put_many("enc", "tpl", rows())


def test_crash_inside_a_write_leaves_a_readable_cache(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sqlite")
    assert _run_in_process(_crash_mid_transaction, path) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmbeddingCacheWarning)
        cache = EmbeddingCache(path)
        found = cache.get_many("enc", "tpl", [f"ok{i}" for i in range(20)] + [f"lost{i}" for i in range(500)])
        assert sorted(found) == sorted(f"ok{i}" for i in range(20))  # the whole crashed transaction is gone
        cache.put_many("enc", "tpl", {"after": _vector("after")})  # and the write lock was released
        assert cache.count() == 21


def _write_forever(path: str) -> None:
    cache = EmbeddingCache(path)
    for t in range(100_000):
        cache.put_many("enc", "tpl", {f"t{t}-{j}": _vector(f"t{t}-{j}") for j in range(50)})


def test_killed_writer_leaves_whole_transactions_only(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    proc = FORK.Process(target=_write_forever, args=(str(path),))
    proc.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until a few transactions have committed, then SIGKILL
        if path.exists():
            try:
                with sqlite3.connect(path, timeout=5) as conn:
                    if conn.execute("SELECT COUNT(*) FROM prompt_vectors_v1").fetchone()[0] >= 500:
                        break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    cache = EmbeddingCache(path)
    total = cache.count()
    assert total >= 500 and total % 50 == 0
    n_tx = total // 50
    found = cache.get_many("enc", "tpl", [f"t{t}-{j}" for t in range(n_tx + 2) for j in range(50)])
    assert len(found) == total and all(f"t{t}-49" in found for t in range(n_tx))
    np.testing.assert_array_equal(found["t0-0"], _vector("t0-0"))


# -- corrupt or unusable files --------------------------------------------------------------------------------
def test_garbage_file_warns_and_rebuilds(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    path.write_bytes(np.random.default_rng(0).bytes(10_000))
    enc = FakeEncoder()
    embedder = PromptEmbedder(enc, TEMPLATES, EmbeddingCache(path))
    with pytest.warns(EmbeddingCacheWarning, match="corrupt"):
        out = embedder.embed(["dog", "cat"])
    torch.testing.assert_close(out, PromptEmbedder(FakeEncoder(), TEMPLATES).embed(["dog", "cat"]))
    assert len(list(tmp_path.glob("c.sqlite.corrupt-*"))) == 1  # kept aside for inspection
    calls = len(enc.calls)
    embedder.embed(["dog", "cat"])
    assert len(enc.calls) == calls  # the rebuilt cache works


def test_truncated_database_warns_and_rebuilds(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = EmbeddingCache(path)
    cache.put_many("enc", "tpl", {f"k{i}": _vector(f"k{i}") for i in range(2000)})
    cache.close()  # checkpoints the WAL into the main file
    data = path.read_bytes()
    assert len(data) > 40_000
    path.write_bytes(data[: len(data) // 3])
    reopened = EmbeddingCache(path)
    with pytest.warns(EmbeddingCacheWarning, match="corrupt"):
        found = reopened.get_many("enc", "tpl", [f"k{i}" for i in range(2000)])
    assert found == {}
    reopened.put_many("enc", "tpl", {"k1": _vector("k1")})
    np.testing.assert_array_equal(reopened.get_many("enc", "tpl", ["k1"])["k1"], _vector("k1"))


def test_unusable_location_is_bypassed(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    cache = EmbeddingCache(blocker / "c.sqlite")
    enc = FakeEncoder()
    with pytest.warns(EmbeddingCacheWarning, match="bypassed"):
        out = PromptEmbedder(enc, TEMPLATES, cache).embed(["dog"])
    assert out.shape == (1, DIM) and cache.disabled_reason is not None
    PromptEmbedder(enc, TEMPLATES, cache).embed(["dog"])  # still works, recomputes
    assert len(enc.calls) == 2


def test_rows_with_wrong_length_are_misses(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    cache = EmbeddingCache(path)
    cache.put_many("enc", "tpl", {"good": _vector("good"), "nan": np.full(DIM, np.nan, dtype=np.float32)})
    cache.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE prompt_vectors_v1 SET vector = x'0000' WHERE phrase = 'good'")
    assert EmbeddingCache(path).get_many("enc", "tpl", ["good", "nan"]) == {}


def test_a_cache_already_rebuilt_by_another_process_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    other = EmbeddingCache(path)  # stands for the process that rebuilt the file first
    other.put_many("enc", "tpl", {"dog": _vector("dog")})
    late = EmbeddingCache(path)
    late._rebuild(sqlite3.DatabaseError("database disk image is malformed"))  # it saw the old corruption late
    assert list(tmp_path.glob("c.sqlite.corrupt-*")) == []
    assert set(late.get_many("enc", "tpl", ["dog"])) == {"dog"}
    other.put_many("enc", "tpl", {"cat": _vector("cat")})
    assert set(late.get_many("enc", "tpl", ["dog", "cat"])) == {"dog", "cat"}


def _append_rows(path: str) -> None:
    warnings.simplefilter("error", EmbeddingCacheWarning)
    EmbeddingCache(path).put_many("enc", "tpl", {"child": _vector("child")})


def test_cache_open_in_the_parent_survives_forked_writers(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sqlite")
    cache = EmbeddingCache(path)
    cache.put_many("enc", "tpl", {"parent": _vector("parent")})
    assert set(cache.get_many("enc", "tpl", ["parent"])) == {"parent"}  # connection open at fork time
    for _ in range(3):
        assert _run_in_process(_append_rows, path) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmbeddingCacheWarning)
        assert set(cache.get_many("enc", "tpl", ["parent", "child"])) == {"parent", "child"}
        cache.put_many("enc", "tpl", {"after": _vector("after")})
    assert cache.count() == 3
