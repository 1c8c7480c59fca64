"""EmojiWorld vocabulary and sprites: checked on the vendored assets."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regionprompt.errors import RegionPromptError
from regionprompt.world.concepts import ASSETS_DIR, SPLIT_VERSION, STYLES, Concept, load_concepts, near_duplicates
from regionprompt.world.sprites import SpriteBank

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_emoji_assets.py"
NPM_CACHE = Path("/tmp/emoji-npm")


@pytest.fixture(scope="module")
def concepts():
    return load_concepts()


def test_version_and_size(concepts) -> None:
    assert concepts.version == SPLIT_VERSION == "emojiworld-v1"
    assert len(concepts) >= 1000
    assert load_concepts() is concepts  # cached


def test_ids_names_keys_unique_and_clean(concepts) -> None:
    assert [c.id for c in concepts] == list(range(1, len(concepts) + 1))
    for field in ("name", "key"):
        values = [getattr(c, field) for c in concepts]
        assert len(set(values)) == len(values), field
    for c in concepts:
        assert isinstance(c, Concept)
        assert re.fullmatch(r"[a-z0-9][a-z0-9' .&-]*", c.name), c.name
        assert re.fullmatch(r"[a-z0-9_]+", c.key), c.key
        assert c.name not in c.synonyms
        for s in c.synonyms:
            assert s == s.lower() and not re.fullmatch(r"[a-z ]*\d+", s), (c.name, s)
    # Synonyms never shadow another concept's name, so look-ups are unambiguous.
    names = {c.name for c in concepts}
    all_synonyms = [s for c in concepts for s in c.synonyms]
    assert not names & set(all_synonyms)
    assert len(all_synonyms) == len(set(all_synonyms))


def test_no_skin_tone_or_excluded_variants(concepts) -> None:
    for c in concepts:
        assert "skin tone" not in c.name and "facing right" not in c.name, c.name
        assert c.category not in {"Symbols", "Component"}
        assert c.subcategory not in {"country-flag", "subdivision-flag", "skin-tone"}
        assert not any(0x1F3FB <= ord(ch) <= 0x1F3FF for ch in c.emoji), c.name
    # Well-known objects are present under clean names.
    for name in ("dog", "dog face", "red apple", "bicycle", "red heart", "pizza"):
        assert concepts.by_name(name).name == name


def test_tiers_follow_lvis_proportions_and_weights(concepts) -> None:
    n = len(concepts)
    tiers = Counter(c.frequency for c in concepts)
    for tier, lvis in {"f": 405, "c": 461, "r": 337}.items():
        assert abs(tiers[tier] / n - lvis / 1203) < 0.02, (tier, tiers)
    mean = {t: np.mean([c.weight for c in concepts if c.frequency == t]) for t in "fcr"}
    assert mean["f"] > 3 * mean["c"] and mean["c"] > 3 * mean["r"]
    # Tiers are cut from the weight ranking: every f weight exceeds every c weight, every c every r.
    assert min(c.weight for c in concepts if c.frequency == "f") > max(c.weight for c in concepts if c.frequency == "c")
    assert min(c.weight for c in concepts if c.frequency == "c") > max(c.weight for c in concepts if c.frequency == "r")
    assert all(0 < c.weight <= 1 for c in concepts)


def test_sampling_probabilities(concepts) -> None:
    p = concepts.sampling_probabilities()
    assert p.shape == (len(concepts),) and np.isclose(p.sum(), 1.0)
    assert np.allclose(concepts.sampling_probabilities(0.0), 1 / len(concepts))
    novel_mask = np.array([c.split == "novel" for c in concepts])
    assert p[novel_mask].sum() < 0.05  # the long tail: novel objects are scarce in det-train scenes
    with pytest.raises(RegionPromptError, match="temperature"):
        concepts.sampling_probabilities(-1)


def test_split_is_rare_heavy_and_spans_categories(concepts) -> None:
    novel, base = concepts.subset(split="novel"), concepts.subset(split="base")
    assert len(novel) + len(base) == len(concepts)
    assert 0.25 <= len(novel) / len(concepts) <= 0.30
    assert sum(c.frequency == "r" for c in novel) / len(novel) >= 0.8
    assert not concepts.subset(split="base", frequency="r") or len(concepts.subset(split="base", frequency="r")) < 0.2 * len(novel)
    assert {c.category for c in novel} == {c.category for c in concepts}
    # Near-duplicate groups straddling the split are recorded.
    for group in near_duplicates():
        splits = {concepts.by_id(m["id"]).split for m in group["concepts"]}
        assert splits == {"base", "novel"}


def test_lookups_and_errors(concepts) -> None:
    dog = concepts.by_name("Dog ")
    assert concepts.by_id(dog.id) is dog
    with_synonyms = next(c for c in concepts if c.synonyms)
    assert concepts.by_name(with_synonyms.synonyms[0].upper().replace(" ", "_")) is with_synonyms
    with pytest.raises(RegionPromptError, match="unknown EmojiWorld concept 'flux capacitor'"):
        concepts.by_name("flux capacitor")
    with pytest.raises(RegionPromptError, match="similar names"):
        concepts.by_name("flamingos")
    with pytest.raises(RegionPromptError, match="id 0"):
        concepts.by_id(0)
    with pytest.raises(RegionPromptError, match="split"):
        concepts.subset(split="train")
    assert "dog" in concepts and "flux capacitor" not in concepts


def test_coco_categories(concepts) -> None:
    cats = concepts.coco_categories()
    assert len(cats) == len(concepts)
    assert set(cats[0]) == {"id", "name", "supercategory", "split", "frequency", "synonyms"}
    json.dumps(cats)  # serialisable
    sub = concepts.subset(split="novel", frequency="r")
    assert all(c.split == "novel" and c.frequency == "r" for c in sub)
    assert [c["id"] for c in sub.coco_categories()] == [c.id for c in sub]


def test_every_concept_has_both_sprites() -> None:
    bank = SpriteBank.load()
    assert SpriteBank.load() is bank
    concepts = load_concepts()
    for style in STYLES:
        for c in concepts:
            arr = bank.array(c.id, style)
            assert arr.shape == (64, 64, 4) and arr.dtype == np.uint8
            alpha = arr[..., 3]
            # A real drawing: a visible blob, not a stray pixel, and not an opaque square.
            assert np.count_nonzero(alpha) > 100 and alpha.min() < 255, (c.name, style)
        with pytest.raises(ValueError):
            arr[0, 0, 0] = 1
    dog = concepts.by_name("dog")
    a, b = bank.array(dog.id, "google"), bank.array(dog.id, "twitter")
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5  # two artists, two drawings
    image = bank.sprite(dog.id, "twitter")
    assert image.mode == "RGBA" and image.size == (64, 64)
    image.putpixel((0, 0), (1, 2, 3, 4))  # a copy: the atlas stays untouched
    assert tuple(bank.array(dog.id, "twitter")[0, 0]) != (1, 2, 3, 4)
    with pytest.raises(RegionPromptError, match="style"):
        bank.array(dog.id, "apple")
    with pytest.raises(RegionPromptError, match="concept id"):
        bank.array(len(concepts) + 1, "google")


def test_distinct_sprites_per_concept() -> None:
    bank = SpriteBank.load()
    for style in STYLES:
        digests = Counter(hashlib.sha1(bank.array(c.id, style).tobytes()).hexdigest() for c in load_concepts())
        assert digests.most_common(1)[0][1] == 1, style


def test_assets_are_compact_and_licensed() -> None:
    size = sum(p.stat().st_size for p in ASSETS_DIR.iterdir() if p.is_file())
    assert size < 15e6
    assert not any(p.is_dir() for p in ASSETS_DIR.iterdir())
    notices = (ASSETS_DIR / "LICENSE-NOTICES.md").read_text(encoding="utf-8")
    for phrase in ("Apache License", "CC-BY 4.0", "MIT License", "Twemoji", "Noto Emoji"):
        assert phrase in notices


def test_build_script_reproduces_vendored_index(tmp_path: Path) -> None:
    """The selection / naming / split logic reproduces the vendored ``concepts.json`` byte for byte.

    Needs the npm tarballs cached in /tmp/emoji-npm (skipped otherwise: tests stay offline). Rebuilding the
    atlases takes minutes, so their byte-identity is checked by running the script twice, not here.
    """
    tarballs = [NPM_CACHE / f"{p}-{v}.tgz" for p, v in (("emoji-datasource-google", "16.0.0"),
                                                         ("emoji-datasource-twitter", "16.0.0"),
                                                         ("emojibase-data", "16.0.3"))]
    if not all(t.exists() for t in tarballs):
        pytest.skip("npm tarballs not cached in /tmp/emoji-npm")
    spec = importlib.util.spec_from_file_location("build_emoji_assets", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    index = module.build_index(NPM_CACHE)
    rebuilt = module.dump_index(index)
    assert rebuilt == (ASSETS_DIR / "concepts.json").read_text(encoding="utf-8")
    assert Image.open(ASSETS_DIR / "atlas_google.png").size[0] == index["atlas"]["google"]["columns"] * 64
