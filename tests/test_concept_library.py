"""Concept files (.safetensors + metadata) and the SQLite concept library, including several processes at once."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest
import torch

from regionprompt.concept import PromptConcept
from regionprompt.errors import PromptError
from regionprompt.concepts import (
    ConceptExistsError,
    ConceptFileError,
    ConceptLibrary,
    ConceptLibraryError,
    ConceptNotFoundError,
    default_library_path,
    load_concept,
    read_concept_file,
    save_concept,
)
from regionprompt.concepts.files import (
    FORMAT_VERSION,
    concept_from_bytes,
    concept_to_bytes,
)


def make_concept(name: str, seed: int, *, dim: int = 16, negatives: int = 2, model_hash: str = "m" * 64) -> PromptConcept:
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.nn.functional.normalize(torch.randn(dim, generator=generator), dim=0)
    neg = torch.nn.functional.normalize(torch.randn(negatives, dim, generator=generator), dim=1)
    sources = tuple({"kind": "text", "text": f"{name} {i}"} for i in range(1 + seed % 3))
    return PromptConcept(name, embedding, model_hash, neg, sources)


def assert_same(a: PromptConcept, b: PromptConcept) -> None:
    assert a.name == b.name and a.model_hash == b.model_hash and a.sources == b.sources
    assert torch.equal(a.embedding, b.embedding) and torch.equal(a.negatives, b.negatives)


# -- concept files -------------------------------------------------------------------------------


def test_file_round_trip_keeps_everything(tmp_path: Path) -> None:
    concept = make_concept("red apple", 3)
    path = save_concept(concept, tmp_path / "apple.safetensors", created="2026-11-25T12:00:00Z")
    stored = read_concept_file(path)
    assert_same(stored.concept, concept)
    assert stored.created == "2026-11-25T12:00:00Z" and stored.format_version == FORMAT_VERSION
    # The metadata is plain safetensors: any safetensors reader sees it.
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
        assert set(handle.keys()) == {"embedding", "negatives"}
    assert meta["name"] == "red apple" and meta["format"] == "regionprompt-concept"
    assert json.loads(meta["sources"]) == [dict(s) for s in concept.sources]


def test_a_namer_embedding_survives_files_renames_and_the_library(tmp_path: Path) -> None:
    concept = dataclasses.replace(make_concept("mug", 2), namer_embedding=torch.linspace(-1, 1, 24))
    loaded = load_concept(save_concept(concept, tmp_path / "mug.safetensors"))
    assert torch.equal(loaded.namer_embedding, concept.namer_embedding)
    library = ConceptLibrary(tmp_path / "c.db")
    library.import_file(tmp_path / "mug.safetensors", name="cup")
    assert torch.equal(library.get("cup").namer_embedding, concept.namer_embedding)
    assert load_concept(save_concept(make_concept("cat", 1), tmp_path / "cat.safetensors")).namer_embedding is None
    with pytest.raises(PromptError, match="namer_embedding must be 1-d"):
        dataclasses.replace(concept, namer_embedding=torch.ones(2, 3))


def test_file_without_negatives_round_trips(tmp_path: Path) -> None:
    concept = make_concept("cat", 1, negatives=0)
    loaded = load_concept(save_concept(concept, tmp_path / "cat.safetensors"))
    assert loaded.negatives.shape == (0, 16)
    assert_same(loaded, concept)


def test_truncated_files_are_named_as_truncated(tmp_path: Path) -> None:
    data = concept_to_bytes(make_concept("dog", 2))
    for cut in (3, 8, 40, len(data) - 5):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        with pytest.raises(ConceptFileError, match="too short|truncated") as info:
            load_concept(path)
        assert str(path) in str(info.value)


def test_wrong_files_give_clear_errors(tmp_path: Path) -> None:
    from safetensors.torch import save as save_tensors

    cases = {
        "missing.safetensors": (None, "file not found"),
        "text.safetensors": (b"hello, I am not a concept file at all", "implausible|not a safetensors"),
        "weights.safetensors": (save_tensors({"w": torch.zeros(3)}), "not a RegionPrompt concept"),
        "empty.safetensors": (b"", "too short"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(ConceptFileError, match=message):
            load_concept(path)
    with pytest.raises(ConceptFileError, match="not a file"):
        load_concept(tmp_path)


def test_newer_format_and_bad_tensors_are_refused() -> None:
    from safetensors.torch import save as save_tensors

    good = make_concept("dog", 2)
    meta = {"format": "regionprompt-concept", "format_version": "99", "name": "dog", "model_hash": "x",
            "created": "2026-11-25T12:00:00Z", "sources": "[]"}
    with pytest.raises(ConceptFileError, match="newer RegionPrompt"):
        concept_from_bytes(save_tensors({"embedding": good.embedding, "negatives": good.negatives}, metadata=meta))
    meta["format_version"] = "1"
    with pytest.raises(ConceptFileError, match="NaN or infinite"):
        bad = good.embedding.clone()
        bad[0] = float("nan")
        concept_from_bytes(save_tensors({"embedding": bad, "negatives": good.negatives}, metadata=meta))
    with pytest.raises(ConceptFileError, match="do not match"):
        concept_from_bytes(save_tensors({"embedding": good.embedding, "negatives": torch.ones(2, 5)}, metadata=meta))
    with pytest.raises(ConceptFileError, match="no 'negatives'"):
        concept_from_bytes(save_tensors({"embedding": good.embedding}, metadata=meta))
    # A flipped byte inside the JSON header.
    data = bytearray(concept_to_bytes(good))
    data[8] = ord("x")  # the header's opening brace
    with pytest.raises(ConceptFileError, match="not JSON|not a safetensors"):
        concept_from_bytes(bytes(data))


# -- the library ---------------------------------------------------------------------------------


def test_add_get_list_remove(tmp_path: Path) -> None:
    library = ConceptLibrary(tmp_path / "lib" / "concepts.db")
    assert library.list() == [] and len(library) == 0
    dog, cat = make_concept("dog", 1), make_concept("Cat", 2, negatives=0)
    info = library.add(dog)
    library.add(cat)
    assert info.name == "dog" and info.num_sources == 2 and info.num_negatives == 2 and info.dim == 16
    assert [i.name for i in library.list()] == ["Cat", "dog"]
    assert_same(library.get("dog"), dog)
    assert_same(library.get("cat"), cat)  # names ignore ASCII case
    assert "DOG" in library and "horse" not in library
    listed = {i.name: i for i in library.list()}
    assert listed["dog"].model_hash == dog.model_hash and listed["dog"].created.endswith("Z")
    assert [i.name for i in library.list(model_hash="other")] == []
    library.remove("dog")
    assert library.names() == ["Cat"]
    with pytest.raises(ConceptNotFoundError, match="no concept named 'dog'.*has: Cat"):
        library.get("dog")
    with pytest.raises(ConceptNotFoundError):
        library.remove("dog")
    # WAL mode is a property of the file, visible to any other connection.
    with sqlite3.connect(library.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_duplicates_are_refused_unless_replaced(tmp_path: Path) -> None:
    library = ConceptLibrary(tmp_path / "concepts.db")
    library.add(make_concept("dog", 1))
    with pytest.raises(ConceptExistsError, match="already exists"):
        library.add(make_concept("DOG", 2))
    assert_same(library.get("dog"), make_concept("dog", 1))
    library.add(make_concept("Dog", 5), replace=True)
    assert library.names() == ["Dog"]
    assert_same(library.get("dog"), make_concept("Dog", 5))


def test_names_are_checked(tmp_path: Path) -> None:
    library = ConceptLibrary(tmp_path / "concepts.db")
    with pytest.raises(ConceptLibraryError, match="control characters"):
        library.add(make_concept("bad\x07name", 1))
    with pytest.raises(ConceptLibraryError, match="limit"):
        library.add(make_concept("x" * 300, 1))
    info = library.add(make_concept("  red   apple ", 1))
    assert info.name == "red apple" and library.get("red apple").name == "red apple"


def test_export_import(tmp_path: Path) -> None:
    source = ConceptLibrary(tmp_path / "a.db")
    concept = make_concept("dog", 4)
    source.add(concept, created="2026-01-02T03:04:05Z")
    path = source.export("dog", tmp_path / "out" / "dog.safetensors")
    assert_same(load_concept(path), concept)
    target = ConceptLibrary(tmp_path / "b.db")
    info = target.import_file(path)
    assert info.created == "2026-01-02T03:04:05Z"
    assert_same(target.get("dog"), concept)
    with pytest.raises(ConceptExistsError):
        target.import_file(path)
    renamed = target.import_file(path, name="puppy")
    assert renamed.name == "puppy" and target.get("puppy").name == "puppy"
    with pytest.raises(ConceptNotFoundError):
        source.export("horse", tmp_path / "horse.safetensors")
    assert not (tmp_path / "horse.safetensors").exists()


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "concepts.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConceptLibraryError, match="not a concept library"):
        ConceptLibrary(path).list()
    with pytest.raises(ConceptLibraryError, match="is a directory"):
        ConceptLibrary(tmp_path).list()


def test_default_path_follows_regionprompt_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIONPROMPT_HOME", str(tmp_path / "home"))
    assert default_library_path() == tmp_path / "home" / "concepts.db"
    library = ConceptLibrary()
    library.add(make_concept("dog", 1))
    assert (tmp_path / "home" / "concepts.db").is_file()


# -- several processes at once -------------------------------------------------------------------

WORKERS = 4
PER_WORKER = 12


def _worker(path: str, worker: int, start, results) -> None:
    # Short lock waits would turn contention into errors; the default 30 s never runs out here.
    library = ConceptLibrary(path)
    start.wait(timeout=120)  # all workers write at the same time, not one after another as they boot
    outcome = {"worker": worker, "shared": None, "errors": []}
    try:
        for j in range(PER_WORKER):
            library.add(make_concept(f"w{worker}-c{j}", 100 * worker + j))
            library.add(make_concept("counter", 100 * worker + j), replace=True)
            library.list()  # readers interleave with the writers
        try:
            library.add(make_concept("shared", worker))
            outcome["shared"] = "added"
        except ConceptExistsError:
            outcome["shared"] = "exists"
    except Exception as exc:  # noqa: BLE001 - any failure is reported, so the parent fails with its message
        outcome["errors"].append(repr(exc))
    results.put(outcome)


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    ConceptLibrary(path).list()  # create the file first, as a running server would have
    context = multiprocessing.get_context("spawn")
    results, start = context.Queue(), context.Barrier(WORKERS)
    processes = [context.Process(target=_worker, args=(str(path), w, start, results)) for w in range(WORKERS)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert all(not o["errors"] for o in outcomes), outcomes
    assert sorted(o["shared"] for o in outcomes) == ["added"] + ["exists"] * (WORKERS - 1)

    library = ConceptLibrary(path)
    names = set(library.names())
    expected = {f"w{w}-c{j}" for w in range(WORKERS) for j in range(PER_WORKER)} | {"counter", "shared"}
    assert names == expected
    for w in range(WORKERS):
        for j in range(PER_WORKER):
            assert_same(library.get(f"w{w}-c{j}"), make_concept(f"w{w}-c{j}", 100 * w + j))
    # "counter" holds one writer's last full version, never a mix of two.
    counter = library.get("counter")
    assert any(torch.equal(counter.embedding, make_concept("counter", 100 * w + PER_WORKER - 1).embedding) for w in range(WORKERS))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
