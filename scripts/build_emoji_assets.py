#!/usr/bin/env python3
"""Rebuild the vendored EmojiWorld assets in ``src/regionprompt/world/assets/`` from the npm tarballs.

Usage::

    python scripts/build_emoji_assets.py                    # cache in /tmp/emoji-npm, write the package assets
    python scripts/build_emoji_assets.py --cache DIR --out DIR

Inputs (fetched once with ``npm pack`` into the cache directory, then read straight from the tarballs):

- ``emoji-datasource-google@16.0.0`` and ``emoji-datasource-twitter@16.0.0``: ``emoji.json`` (categories,
  Unicode names, short names) and the 64 px PNGs (``img/<style>/64/*.png``);
- ``emojibase-data@16.0.3``: the CLDR English labels (``en/data.json``), which give readable names
  ("red heart", "grinning face with big eyes") where the Unicode character names of ``emoji.json`` are
  historical ("HEAVY BLACK HEART", "SMILING FACE WITH OPEN MOUTH").

Outputs (flat folder, package data):

- ``atlas_google.png``, ``atlas_twitter.png``: RGBA grids of 64x64 cells; concept ``id`` sits in cell ``id - 1``
  (row-major, ``columns`` cells per row);
- ``concepts.json``: version, atlas layout, source tarball hashes, the weighting recipe and one record per
  concept (id, key, name, synonyms, category, subcategory, group, weight, frequency, split, unified, emoji);
- ``LICENSE-NOTICES.md``: artwork and package licences.

Which emoji count as objects. Kept: Smileys & Emotion (faces are drawn objects), People & Body, Animals &
Nature, Food & Drink, Travel & Places, Activities, Objects, and the eight physical flags (``Flags/flag``:
chequered, pirate, white flag ...). Dropped, because they are not objects or would make labels ill-posed:

- country and subdivision flags: rectangles named after nations, not things;
- all of ``Symbols`` (arrows, letters, keycaps, zodiac glyphs, geometric shapes) and ``Component`` (skin-tone
  and hair swatches): glyphs, not objects;
- ``Smileys & Emotion/emotion`` (anger symbol, dash, zzz, collision ...): comic-strip marks;
- the 24 analog clock faces ("one o'clock", "one-thirty"): only the hand angle differs, which rotation
  augmentation destroys;
- the "... facing right" variants: mirror images of another concept, indistinguishable once scenes flip sprites;
- gender/role permutations of multi-person pictograms ("family: man, woman, boy", "kiss: man, man"); the
  generic "family", "kiss" and "couple with heart" stay;
- gendered variants that have a gender-neutral concept ("man cook" and "woman cook" beside "cook", "deaf man"
  beside "deaf person", "men wrestling" beside "people wrestling"): the neutral concept is their hypernym and
  the drawings differ by hair or colour only, so a detection of "cook" on a "man cook" would count as wrong.
  Gendered concepts without a neutral form ("man dancing", "woman dancing", "prince", "old man") stay.

Skin-tone variations are listed under ``skin_variations`` in ``emoji.json`` and are never emitted; only
entries drawn in both styles (``has_img_google`` and ``has_img_twitter`` and the PNG present) are kept.

Sampling weights, tiers and the split are computed here once and stored (``SPLIT_VERSION``), so they never
change at import. Weights decay geometrically with a rank (``weight = DYNAMIC_RANGE ** -(rank / N)``, from 1
down to 1/200): a long tail where the border weights of the tiers differ about 8x, like LVIS' 100-image /
10-image thresholds. The rank is a seeded hash permutation stratified by category, so each category spreads
over all tiers. Tiers follow LVIS proportions (405 f / 461 c / 337 r of 1,203). Novel = the rare tier
(LVIS' protocol: novel = rare), about 28% of the concepts, drawn from every category. Concepts sharing a
``group`` (e.g. "cat" and "cat face", "man running" and "woman running") may fall into different splits;
those groups are listed in ``near_duplicates``.

The script is deterministic: the same tarballs give byte-identical outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import re
import subprocess
import sys
import tarfile
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_VERSION = "emojiworld-v1"
STYLES = ("google", "twitter")
PACKAGES = {
    "google": ("emoji-datasource-google", "16.0.0"),
    "twitter": ("emoji-datasource-twitter", "16.0.0"),
    "labels": ("emojibase-data", "16.0.3"),
}
SPRITE = 64
ATLAS_COLUMNS = 40
DYNAMIC_RANGE = 200.0
LVIS_TIERS = {"f": 405, "c": 461, "r": 337}
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "regionprompt" / "world" / "assets"

EXCLUDED_CATEGORIES = {"Symbols", "Component"}
EXCLUDED_SUBCATEGORIES = {("Flags", "country-flag"), ("Flags", "subdivision-flag"), ("Smileys & Emotion", "emotion")}
# Composed multi-person pictograms whose CLDR label lists members ("family: man, woman, boy").
COMPOSITION_HEADS = ("family:", "kiss:", "couple with heart:")
# Historical Unicode-name words that contradict the artwork ("HEAVY BLACK HEART" is red).
MISLEADING_WORDS = {"white", "black", "heavy"}
# Short names that are vulgar or name something else ("flags" is the carp streamer, "city sunrise" the sunset).
BAD_SYNONYMS = {"shit", "flags", "city sunrise"}
LINKING_WORDS = {"with", "and", "in", "of"}
GENERIC_WORDS = {"man", "woman", "person", "men", "women", "people", "boy", "girl", "male", "female", "face"}


@dataclass(frozen=True)
class Entry:
    """One selected emoji before ranking."""

    unified: str
    image: str
    emoji: str
    name: str
    synonyms: tuple[str, ...]
    category: str
    subcategory: str
    group: str
    sort_order: int


def fetch(cache: Path, package: str, version: str) -> Path:
    """Return the cached tarball of ``package@version``, running ``npm pack`` if it is missing."""
    tarball = cache / f"{package}-{version}.tgz"
    if not tarball.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", f"{package}@{version}", "--pack-destination", str(cache)], check=True)
    if not tarball.exists():
        raise SystemExit(f"npm pack did not produce {tarball}")
    return tarball


def read_member(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(f"package/{name}")
    if member is None:
        raise SystemExit(f"{name} missing from {tar.name}")
    return member.read()


def clean_text(text: str) -> str:
    """Lower-case ASCII words: accents stripped, quotes and odd punctuation removed, spaces collapsed."""
    text = text.replace("\u2019", "'")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = text.replace("_", " ").replace("\u201c", "").replace("\u201d", "")
    text = re.sub(r"[^a-z0-9' .&-]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def clean_short_name(short: str) -> str | None:
    """``"dog2"``, ``"+1"``, ``"100"`` -> None; ``"female-doctor"`` -> ``"female doctor"``."""
    if re.search(r"[a-z]\d+$", short) or re.search(r"_\d+$", short) or not re.search(r"[a-z]{2}", short):
        return None
    text = clean_text(short.replace("-", " "))
    return None if text in BAD_SYNONYMS else text


def display_name(label: str, short_names: list[str]) -> str:
    """CLDR label made readable; ``"man: beard"``-style labels take the short name ("man with beard")."""
    if ":" in label:
        for short in short_names:
            cleaned = clean_short_name(short)
            if cleaned:
                return cleaned
    return clean_text(label)


def group_key(short_names: list[str], name: str) -> str:
    """Near-duplicate family: ``"dog face"`` and ``"dog"`` (short names dog / dog2) share ``"dog"``."""
    base = re.sub(r"\d+$", "", short_names[0]).replace("-", "_")
    words = [w for w in base.split("_") if w and w not in GENERIC_WORDS]
    while words and words[0] in LINKING_WORDS:
        words = words[1:]
    if not words:
        words = [w for w in name.split() if w not in GENERIC_WORDS] or name.split()
    return " ".join(words)


def gender_neutral_forms(label: str) -> list[str]:
    """Labels that would be the gender-neutral form of ``label``: "man cook" -> ["cook", "person cook"]."""
    label = label.lower()
    forms = []
    lead = re.fullmatch(r"(man|woman|men|women)(:? )(.+)", label)
    if lead:
        who, sep, rest = lead.groups()
        forms += [rest, ("people" if who in ("men", "women") else "person") + sep + rest]
    tail = re.fullmatch(r"(.+) (man|woman)", label)
    if tail:
        forms.append(f"{tail.group(1)} person")
    return forms


def select(emoji: list[dict], labels: dict[str, dict], pngs: dict[str, set[str]]) -> list[Entry]:
    """Object emoji drawn in both styles, with clean names; skin tones never enter (they are nested)."""
    entries = []
    all_labels = {x["label"].lower() for x in labels.values()}
    for e in sorted(emoji, key=lambda e: e["sort_order"]):
        category, sub = e["category"], e["subcategory"]
        if category in EXCLUDED_CATEGORIES or (category, sub) in EXCLUDED_SUBCATEGORIES:
            continue
        if not all(e.get(f"has_img_{s}") and e["image"] in pngs[s] for s in STYLES):
            continue
        cldr = labels.get(e["unified"]) or labels.get(e["unified"].replace("-FE0F", ""))
        if cldr is None:
            raise SystemExit(f"no CLDR label for {e['unified']} ({e['name']})")
        label = cldr["label"]
        if "facing right" in label.lower() or label.lower().startswith(COMPOSITION_HEADS):
            continue
        if any(form in all_labels for form in gender_neutral_forms(label)):
            continue
        if sub == "time" and re.fullmatch(r"(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
                                          r"(-thirty| o.clock)", label.lower()):
            continue
        name = display_name(label, e["short_names"])
        synonyms = [s for s in (clean_short_name(x) for x in e["short_names"]) if s]
        unicode_name = clean_text(e["name"] or "")
        if unicode_name and not (set(unicode_name.split()) & MISLEADING_WORDS - set(name.split())):
            synonyms.append(unicode_name)
        synonyms = list(dict.fromkeys(s for s in synonyms if s != name))
        entries.append(Entry(
            unified=e["unified"], image=e["image"], emoji=cldr["emoji"], name=name, synonyms=tuple(synonyms),
            category=category, subcategory=sub, group=group_key(e["short_names"], name),
            sort_order=e["sort_order"],
        ))
    names = Counter(x.name for x in entries)
    duplicated = sorted(n for n, c in names.items() if c > 1)
    if duplicated:
        raise SystemExit(f"duplicate concept names after cleaning: {duplicated}")
    return entries


def resolve_synonyms(entries: list[Entry]) -> list[tuple[str, ...]]:
    """Drop synonyms that are another concept's name or shared by several concepts (ambiguous look-ups)."""
    names = {e.name for e in entries}
    owners = Counter(s for e in entries for s in set(e.synonyms))
    return [tuple(s for s in e.synonyms if s not in names and owners[s] == 1) for e in entries]


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{SPLIT_VERSION}:{text}".encode()).digest()[:8], "big")


def rank_concepts(entries: list[Entry], keys: list[str]) -> list[int]:
    """A seeded permutation stratified by category: each category's concepts spread evenly over all ranks.

    Returns ``rank[i]`` in ``0 .. N-1`` for entry ``i`` (0 = most frequent).
    """
    by_category: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(entries):
        by_category[e.category].append(i)
    position = {}
    for members in by_category.values():
        members.sort(key=lambda i: stable_hash(keys[i]))
        for j, i in enumerate(members):
            # Quantile inside the category, jittered so categories interleave rather than alternate rigidly.
            jitter = (stable_hash("jitter:" + keys[i]) % 10_000) / 10_000 - 0.5
            position[i] = (j + 0.5 + jitter) / len(members)
    order = sorted(range(len(entries)), key=lambda i: (position[i], stable_hash(keys[i])))
    rank = [0] * len(entries)
    for r, i in enumerate(order):
        rank[i] = r
    return rank


def tier_bounds(n: int) -> tuple[int, int]:
    """Rank cut-offs (f below the first, r from the second) in LVIS proportions."""
    total = sum(LVIS_TIERS.values())
    f_end = round(n * LVIS_TIERS["f"] / total)
    c_end = f_end + round(n * LVIS_TIERS["c"] / total)
    return f_end, c_end


def make_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.replace("'", "")).strip("_")


def load_sprite(tar: tarfile.TarFile, style: str, image: str) -> np.ndarray:
    """(64, 64, 4) uint8 RGBA; palette and grey+alpha PNGs are converted."""
    raw = read_member(tar, f"img/{style}/64/{image}")
    with Image.open(io.BytesIO(raw)) as im:
        rgba = im.convert("RGBA")
    if rgba.size != (SPRITE, SPRITE):
        rgba = rgba.resize((SPRITE, SPRITE), Image.Resampling.LANCZOS)
    arr = np.asarray(rgba, dtype=np.uint8).copy()
    # Fully transparent pixels carry arbitrary colour in the sources; zero them so resampling never bleeds it.
    arr[arr[..., 3] == 0] = 0
    if not arr[..., 3].any():
        raise SystemExit(f"{style}/{image} has an empty alpha channel")
    return arr


def build_atlas(sprites: list[np.ndarray]) -> Image.Image:
    rows = math.ceil(len(sprites) / ATLAS_COLUMNS)
    atlas = np.zeros((rows * SPRITE, ATLAS_COLUMNS * SPRITE, 4), dtype=np.uint8)
    for cell, arr in enumerate(sprites):
        r, c = divmod(cell, ATLAS_COLUMNS)
        atlas[r * SPRITE:(r + 1) * SPRITE, c * SPRITE:(c + 1) * SPRITE] = arr
    return Image.fromarray(atlas)


def licence_notices(texts: dict[str, str]) -> str:
    return f"""# Licence notices for the EmojiWorld assets

The files in this folder (`atlas_google.png`, `atlas_twitter.png`, `concepts.json`) are a processed copy
(selected 64 px sprites packed into atlases, cleaned names) of third-party data, built by
`scripts/build_emoji_assets.py` from these npm packages:

| package | version | what we use | licence |
|---|---|---|---|
| emoji-datasource-google | {PACKAGES['google'][1]} | `emoji.json`, 64 px PNGs | package MIT; artwork Apache-2.0 |
| emoji-datasource-twitter | {PACKAGES['twitter'][1]} | 64 px PNGs | package MIT; artwork CC-BY-4.0 |
| emojibase-data | {PACKAGES['labels'][1]} | CLDR English labels (`en/data.json`) | MIT |

## Artwork

- `atlas_google.png`: **Noto Emoji** artwork, Copyright Google Inc., licensed under the Apache License,
  Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0; source https://github.com/googlefonts/noto-emoji).
- `atlas_twitter.png`: **Twemoji** graphics, Copyright 2019 Twitter, Inc and other contributors (Twemoji
  is maintained at https://github.com/jdecked/twemoji), licensed under CC-BY 4.0
  (https://creativecommons.org/licenses/by/4.0/). Attribution: "Twemoji by Twitter, Inc and other
  contributors, CC-BY 4.0". Changes: sprites were selected, converted to RGBA and packed into one atlas.

## emoji-datasource (emoji-datasource-google, emoji-datasource-twitter)

```
{texts['datasource'].strip()}
```

## emojibase-data

```
{texts['labels'].strip()}
```
"""


def open_tarballs(cache: Path) -> dict[str, tarfile.TarFile]:
    return {k: tarfile.open(fetch(cache, *pkg), "r:gz") for k, pkg in PACKAGES.items()}


def build_index(cache: Path) -> dict:
    """The ``concepts.json`` content: selection, names, synonyms, weights, tiers and split (no images)."""
    tars = open_tarballs(cache)
    try:
        emoji = json.loads(read_member(tars["google"], "emoji.json"))
        if json.loads(read_member(tars["twitter"], "emoji.json")) != emoji:
            raise SystemExit("emoji.json differs between the google and twitter packages")
        labels = {e["hexcode"]: e for e in json.loads(read_member(tars["labels"], "en/data.json"))}
        pngs = {s: {Path(m.name).name for m in tars[s].getmembers() if m.name.startswith(f"package/img/{s}/64/")}
                for s in STYLES}
    finally:
        for tar in tars.values():
            tar.close()
    entries = select(emoji, labels, pngs)
    synonyms = resolve_synonyms(entries)
    keys = [make_key(e.name) for e in entries]
    if len(set(keys)) != len(keys):
        raise SystemExit("concept keys collide")
    rank = rank_concepts(entries, keys)
    f_end, c_end = tier_bounds(len(entries))
    n = len(entries)
    concepts = []
    for i, e in enumerate(entries):
        tier = "f" if rank[i] < f_end else "c" if rank[i] < c_end else "r"
        concepts.append({
            "id": i + 1, "key": keys[i], "name": e.name, "synonyms": list(synonyms[i]),
            "category": e.category, "subcategory": e.subcategory, "group": e.group,
            "weight": float(f"{DYNAMIC_RANGE ** -(rank[i] / n):.6g}"), "frequency": tier,
            "split": "novel" if tier == "r" else "base", "unified": e.unified, "emoji": e.emoji,
            "image": e.image,
        })
    groups: dict[str, list[dict]] = defaultdict(list)
    for c in concepts:
        groups[c["group"]].append(c)
    near_duplicates = [
        {"group": g, "concepts": [{"id": c["id"], "name": c["name"], "split": c["split"]} for c in members]}
        for g, members in sorted(groups.items())
        if len({c["split"] for c in members}) > 1
    ]
    return {
        "version": SPLIT_VERSION,
        "sprite_size": SPRITE,
        "atlas": {s: {"file": f"atlas_{s}.png", "columns": ATLAS_COLUMNS} for s in STYLES},
        "sources": {k: {"package": p[0], "version": p[1],
                        "sha256": hashlib.sha256((cache / f"{p[0]}-{p[1]}.tgz").read_bytes()).hexdigest()}
                    for k, p in PACKAGES.items()},
        "weighting": {"rule": "weight = dynamic_range ** -(rank / n); rank = category-stratified hash "
                              "permutation; tiers by rank in LVIS proportions; novel = rare tier",
                      "dynamic_range": DYNAMIC_RANGE, "lvis_tiers": LVIS_TIERS},
        "near_duplicates": near_duplicates,
        "concepts": concepts,
    }


def dump_index(index: dict) -> str:
    """Canonical JSON text of the index (stable key order, ASCII, one trailing newline)."""
    return json.dumps(index, indent=1, ensure_ascii=True) + "\n"


def build(cache: Path, out: Path) -> dict:
    """Write atlases, ``concepts.json`` and licence notices into ``out``; return the index."""
    index = build_index(cache)
    out.mkdir(parents=True, exist_ok=True)
    tars = open_tarballs(cache)
    try:
        for style in STYLES:
            sprites = [load_sprite(tars[style], style, c["image"]) for c in index["concepts"]]
            # Fixed zlib settings and no metadata chunks keep the PNG byte-identical across runs.
            build_atlas(sprites).save(out / f"atlas_{style}.png", format="PNG", optimize=True)
        notices = licence_notices({
            "datasource": read_member(tars["google"], "LICENSE").decode("utf-8"),
            "labels": read_member(tars["labels"], "LICENSE").decode("utf-8"),
        })
    finally:
        for tar in tars.values():
            tar.close()
    (out / "concepts.json").write_text(dump_index(index), encoding="utf-8")
    (out / "LICENSE-NOTICES.md").write_text(notices, encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/emoji-npm"),
                        help="where npm tarballs are downloaded/reused (default /tmp/emoji-npm)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    index = build(args.cache, args.out)
    concepts = index["concepts"]
    tiers = Counter(c["frequency"] for c in concepts)
    splits = Counter(c["split"] for c in concepts)
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"{len(concepts)} concepts  base/novel {splits['base']}/{splits['novel']}  "
          f"f/c/r {tiers['f']}/{tiers['c']}/{tiers['r']}  {len(index['near_duplicates'])} split near-duplicate "
          f"groups  assets {size / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
