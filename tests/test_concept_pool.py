"""Concept pools from captions: noun-phrase backends, counting, pool files, coverage, CLI, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from regionprompt.cli import main
from regionprompt.errors import DatasetError, RegionPromptError
from regionprompt.vl.concept_pool import (
    COCO_SYNONYMS,
    CaptionUnit,
    ConceptPool,
    build_concept_pool,
    load_pool_embeddings,
    pool_coverage,
    read_caption_units,
    save_pool_embeddings,
)
from regionprompt.vl.nouns import BACKENDS, canonical_name, make_extractor, normalize_phrase, singularize_noun

COCO_CAPTIONS = Path("coco_captions_val2017") / "captions_val2017.json"
COCO80 = Path("metadata") / "coco80_categories.json"


@pytest.fixture(scope="module", params=BACKENDS)
def extractor(request):
    return make_extractor(request.param)


def phrases(extractor, caption: str) -> list[str]:
    return next(iter(extractor.extract([caption])))


def test_singularize_noun() -> None:
    expected = {"dogs": "dog", "buses": "bus", "people": "person", "women": "woman", "teeth": "tooth",
                "knives": "knife", "skis": "ski", "frisbees": "frisbee", "sheep": "sheep", "scissors": "scissors",
                "glass": "glass", "australia": "australia"}
    assert {w: singularize_noun(w) for w in expected} == expected


def test_normalisation_of_names() -> None:
    assert normalize_phrase("  Teddy-Bear\tgreen_apple ") == "teddy bear green apple"
    assert canonical_name("Teddy-Bears") == "teddy bear"
    assert canonical_name("hot dogs") == "hot dog"


def test_plurals_singularised_and_determiners_dropped(extractor) -> None:
    out = phrases(extractor, "Two dogs and some cats sleep next to the sofas.")
    assert {"dog", "cat", "sofa"} <= set(out)
    assert not any(word in p.split() for p in out for word in ("two", "some", "the", "dogs", "cats"))


def test_compounds_and_head_nouns_kept(extractor) -> None:
    out = set(phrases(extractor, "A red apple next to a fire hydrant and a teddy-bear."))
    assert {"apple", "red apple", "hydrant", "fire hydrant", "bear", "teddy bear"} <= out


def test_stop_phrases_possessives_and_verbs_dropped(extractor) -> None:
    out = phrases(extractor, "A picture of a group of people on top of a hill near a man's dog.")
    assert set(out) == {"person", "hill", "dog"}
    out = set(phrases(extractor, "A man riding a horse while a woman holds an umbrella."))
    assert out == {"man", "horse", "woman", "umbrella"}


def test_counts_once_per_image_with_threshold(tmp_path: Path) -> None:
    corpus = tmp_path / "mini.jsonl"
    lines = [
        {"image_id": 1, "captions": ["A dog on a couch.", "Two dogs on a sofa.", "A cellphone on a couch."]},
        {"image_id": 2, "caption": "A dog with a cell phone."},
        {"image_id": 2, "caption": "A brown dog."},
        {"caption": "A photo of a cat."},
        {"caption": "Cats and a dog."},
    ]
    corpus.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    units = read_caption_units(corpus)
    assert [len(u.captions) for u in units] == [3, 2, 1, 1]
    for backend in BACKENDS:
        pool, stats = build_concept_pool(units, backend=backend, min_count=2, show_progress=False)
        # dog: images 1, 2 and line 5; couch only in image 1 (twice: counted once); the two spellings of
        # "cell phone" merge and image 1 + 2 count once each.
        assert dict(zip(pool.names, pool.counts)) == {"dog": 3, "cat": 2, "cell phone": 2}, backend
        assert pool.names == ("dog", "cat", "cell phone")  # count desc, then name
        assert stats.captions == 7 and stats.units == 4 and stats.kept == 3
        capped, _ = build_concept_pool(units, backend=backend, min_count=1, max_concepts=2, show_progress=False)
        assert len(capped) == 2 and capped.names[0] == "dog"
        assert capped.counts == (3, 2) and capped.min_count == 1


def test_plain_text_units_and_bad_options(tmp_path: Path) -> None:
    corpus = tmp_path / "caps.txt"
    corpus.write_text("A dog.\n\n  A dog and a cat.\n", encoding="utf-8")
    units = read_caption_units(corpus)
    assert units == [CaptionUnit("line1", ("A dog.",)), CaptionUnit("line3", ("A dog and a cat.",))]
    with pytest.raises(DatasetError, match="min_count"):
        build_concept_pool(units, backend="rules", min_count=0)
    with pytest.raises(RegionPromptError, match="unknown noun-phrase backend 'nltk'"):
        build_concept_pool(units, backend="nltk")


@pytest.fixture(scope="module")
def real_units(shared_data: Path) -> list[CaptionUnit]:
    units = read_caption_units(shared_data / COCO_CAPTIONS)
    assert len(units) == 5000 and sum(len(u.captions) for u in units) == 25014
    return units[:400]  # 2,001 captions


@pytest.mark.parametrize(("backend", "min_exact", "min_synonym"), [("spacy", 64, 68), ("rules", 63, 68)])
def test_real_coco_subset_covers_coco_classes(real_units, shared_data: Path, backend, min_exact, min_synonym) -> None:
    names = [c["name"] for c in json.loads((shared_data / COCO80).read_text(encoding="utf-8"))]
    pool, stats = build_concept_pool(real_units, backend=backend, min_count=2, show_progress=False)
    cov = pool_coverage(pool, names, COCO_SYNONYMS)
    assert stats.captions == 2001
    assert len(cov.exact) >= min_exact, cov.missing
    assert cov.with_synonyms >= min_synonym, cov.missing
    assert set(cov.exact) | set(cov.via_synonym) | set(cov.missing) == set(names)
    # Sanity of the head of the distribution: frequent objects, no layout or counting words.
    top = set(pool.names[:30])
    assert {"man", "person", "table", "woman"} <= top
    assert not top & {"picture", "top", "front", "group", "lot", "side"}


def test_pool_file_deterministic_and_round_trips(real_units, tmp_path: Path) -> None:
    digests = []
    for run in range(2):
        pool, _ = build_concept_pool(real_units, backend="rules", min_count=3, source="captions_val2017.json", show_progress=False)
        path = pool.save(tmp_path / f"pool{run}.json")
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    data = json.loads(path.read_text(encoding="utf-8"))
    assert list(data) == ["version", "source", "backend", "min_count", "concepts"]
    keys = [(-c["count"], c["name"]) for c in data["concepts"]]
    assert keys == sorted(keys) and all(c["count"] >= 3 for c in data["concepts"])
    assert ConceptPool.load(path) == pool
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_bad_inputs_raise_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_caption_units(tmp_path / "missing.json")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"images": [', encoding="utf-8")
    with pytest.raises(DatasetError, match="bad.json"):
        read_caption_units(bad_json)
    bad_lines = tmp_path / "bad.jsonl"
    bad_lines.write_text('{"caption": "a dog"}\n{"caption": 3}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: expected an object"):
        read_caption_units(bad_lines)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"caption": "a dog"\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"broken\.jsonl:1: invalid JSON"):
        read_caption_units(broken)
    binary = tmp_path / "caps.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_caption_units(binary)
    not_pool = tmp_path / "pool.json"
    not_pool.write_text('{"concepts": [{"name": "dog"}]}', encoding="utf-8")
    with pytest.raises(DatasetError, match="not a concept pool"):
        ConceptPool.load(not_pool)


def test_cli_extract_with_coverage(tmp_path: Path, capsys) -> None:
    captions = tmp_path / "caps.jsonl"
    captions.write_text(
        "\n".join(json.dumps({"image": f"{i}.jpg", "caption": c}) for i, c in enumerate(
            ["A dog on a sofa.", "Two dogs near a television.", "A dog and a cat.", "A cat on a sofa."]
        )),
        encoding="utf-8",
    )
    names = tmp_path / "names.json"
    names.write_text(json.dumps([{"name": "dog"}, {"name": "couch"}, {"name": "tv"}, {"name": "zebra"}]), encoding="utf-8")
    out = tmp_path / "pool" / "pool.json"
    code = main(["concepts", "extract", str(captions), "--out", str(out), "--backend", "rules", "--min-count", "1",
                 "--coverage", str(names)])
    printed = capsys.readouterr().out
    assert code == 0
    pool = ConceptPool.load(out)
    assert dict(zip(pool.names, pool.counts)) == {"dog": 3, "cat": 2, "sofa": 2, "television": 1}
    assert pool.backend == "rules" and pool.source == "caps.jsonl"
    assert "captions: 4" in printed and "kept concepts: 4" in printed
    assert "exact 1/4, with synonyms 3/4" in printed and "missing: zebra" in printed


def test_cli_errors_are_messages(tmp_path: Path, capsys) -> None:
    code = main(["concepts", "extract", str(tmp_path / "nope.json"), "--out", str(tmp_path / "p.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope.json: caption file not found" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    assert main(["concepts", "extract", str(empty), "--out", str(tmp_path / "p.json")]) == 2
    assert "no captions found" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


class _FakeTextEncoder:
    """A deterministic text tower: hashed bag of characters, L2-normalised."""

    embed_dim = 16

    def encode_text(self, texts):
        rows = torch.zeros(len(texts), self.embed_dim)
        for i, text in enumerate(texts):
            for j, ch in enumerate(text):
                rows[i, (ord(ch) * 7 + j) % self.embed_dim] += 1.0
        return torch.nn.functional.normalize(rows, dim=-1)

    def weights_hash(self) -> str:
        return "fake-encoder-v1"


def test_pool_embeddings_written_in_pool_order(tmp_path: Path) -> None:
    from regionprompt.vl.embeddings import PromptEmbedder

    pool = ConceptPool(("dog", "teddy bear", "cat"), (5, 3, 2), "rules", "mini", 2)
    embedder = PromptEmbedder(_FakeTextEncoder(), templates=["a photo of a {}.", "{}"], cache=None)
    path = save_pool_embeddings(pool, embedder, tmp_path / "pool.safetensors")
    names, matrix = load_pool_embeddings(path)
    assert names == pool.names
    assert matrix.shape == (3, 16) and matrix.dtype == torch.float32
    torch.testing.assert_close(matrix, embedder.embed(list(pool.names)))
    torch.testing.assert_close(matrix.norm(dim=1), torch.ones(3))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DatasetError, match="not a concept-pool embedding file"):
        load_pool_embeddings(tmp_path / "junk.safetensors")
