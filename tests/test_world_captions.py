"""EmojiWorld captions: English rules, and every caption is true about the objects it was given."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from regionprompt.world.captions import CaptionObject, make_captions, relation
from regionprompt.world.language import count_phrase, indefinite_article, pluralize


@pytest.mark.parametrize(
    ("phrase", "count", "expected"),
    [
        ("dog", 1, "a dog"),
        ("dog", 2, "two dogs"),
        ("octopus", 1, "an octopus"),
        ("slice of pizza", 3, "three slices of pizza"),
        ("man in tuxedo", 2, "two men in tuxedo"),
        ("glasses", 1, "a pair of glasses"),
        ("running shoes", 2, "two pairs of running shoes"),
        ("butterfly", 4, "four butterflies"),
        ("fox", 2, "two foxes"),
        ("fish", 5, "five fish"),
        ("snowman", 2, "two snowmen"),
        ("key", 2, "two keys"),
        ("unicorn", 1, "a unicorn"),
        ("hourglass", 1, "an hourglass"),
        ("UFO", 1, "a UFO"),
        ("SOS button", 1, "an SOS button"),
        ("tomato", 2, "two tomatoes"),
        ("knife", 2, "two knives"),
        ("human", 2, "two humans"),
        ("grapes", 1, "some grapes"),
        ("grapes", 2, "two sets of grapes"),
        ("eyes", 1, "a pair of eyes"),
        ("curry rice", 2, "two portions of curry rice"),
        ("man juggling", 3, "three men juggling"),
        ("face with tears of joy", 2, "two faces with tears of joy"),
        ("grinning squinting face", 2, "two grinning squinting faces"),
        ("women and man holding hands", 1, "some women and man holding hands"),
    ],
)
def test_count_phrase(phrase: str, count: int, expected: str) -> None:
    assert count_phrase(phrase, count) == expected


def test_pluralize_and_article_edge_cases() -> None:
    assert pluralize("baby bottle") == "baby bottles"
    assert pluralize("cup with straw") == "cups with straw"
    assert indefinite_article("eagle") == "an"
    assert indefinite_article("ukulele") == "a"


OBJECTS = [
    CaptionObject(1, "dog", ("puppy",), (10, 100, 40, 130)),
    CaptionObject(1, "dog", ("puppy",), (60, 100, 90, 130)),
    CaptionObject(2, "red apple", (), (200, 20, 230, 50)),
    CaptionObject(3, "glasses", ("eyeglasses",), (250, 250, 300, 280)),
    CaptionObject(4, "octopus", (), (5, 5, 25, 25)),
    CaptionObject(5, "fish", (), (100, 200, 120, 220)),
    CaptionObject(5, "fish", (), (130, 200, 150, 220)),
    CaptionObject(5, "fish", (), (160, 200, 180, 220)),
]
NUMBER = {"two": 2, "three": 3, "four": 4, "five": 5}


def test_captions_are_true_about_the_objects() -> None:
    true_counts = Counter(o.concept_id for o in OBJECTS)
    names = {o.concept_id: {o.name, *o.synonyms} for o in OBJECTS}
    rng = np.random.default_rng(0)
    texts = set()
    saw = Counter()
    for _ in range(200):
        for caption in make_captions(OBJECTS, "a plain blue background", rng, count=3, canvas_size=320):
            texts.add(caption.text)
            assert caption.mentions, caption.text
            for mention in caption.mentions:
                assert mention.count == true_counts[mention.concept_id]
                assert mention.phrase.lower() in caption.text.lower()
                assert any(n in mention.phrase for name in names[mention.concept_id] for n in (name, pluralize(name)))
                first = mention.phrase.split()[0]
                if first in NUMBER:
                    assert NUMBER[first] == mention.count, caption.text
                    saw["number"] += 1
                elif first == "several":
                    assert mention.count >= 3
                    saw["several"] += 1
                else:
                    assert mention.count == 1 and first in {"a", "an"}, caption.text
            if "background" in caption.text:
                assert "plain blue background" in caption.text
                saw["background"] += 1
            if "puppy" in caption.text or "eyeglasses" in caption.text:
                saw["synonym"] += 1
            if re.search(r"to the (left|right) of|above|below|next to", caption.text):
                saw["spatial"] += 1
            if len(caption.mentions) < len(true_counts):
                saw["incomplete"] += 1
    # The grammar is varied: every feature shows up, and captions differ.
    assert all(saw[key] > 5 for key in ("number", "several", "background", "synonym", "spatial", "incomplete")), saw
    assert len(texts) > 200


def test_spatial_words_follow_the_boxes() -> None:
    assert relation((0, 0, 10, 10), (100, 0, 110, 10), 320) == "to the left of"
    assert relation((100, 0, 110, 10), (0, 0, 10, 10), 320) == "to the right of"
    assert relation((0, 0, 10, 10), (0, 100, 10, 110), 320) == "above"
    assert relation((0, 100, 10, 110), (0, 0, 10, 10), 320) == "below"
    assert relation((0, 0, 10, 10), (5, 5, 15, 15), 320) == "next to"
    rng = np.random.default_rng(1)
    octopus, apple = OBJECTS[4], OBJECTS[2]
    for _ in range(100):
        for caption in make_captions([octopus, apple], "a plain blue background", rng, count=2, canvas_size=320):
            if "to the left of" in caption.text:
                assert caption.text.index("octopus") < caption.text.index("apple")


def test_captions_without_objects_describe_the_background() -> None:
    captions = make_captions([], "a red and white striped background", np.random.default_rng(0), count=2, canvas_size=320)
    assert 1 <= len(captions) <= 2
    assert all("striped background" in c.text and not c.mentions for c in captions)
