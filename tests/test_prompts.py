import pytest

from regionprompt.errors import PromptError
from regionprompt.prompts import (
    BoxPrompt,
    PointPrompt,
    TextPrompt,
    group_prompts,
    split_phrases,
    validate_visual_prompts,
)


def test_split_phrases():
    assert split_phrases(" dog,  red   apple;cat.\n") == ["dog", "red apple", "cat"]
    assert split_phrases(" , ;") == []


def test_grouping_mixed_and_negative_prompts():
    other_image = "elsewhere.jpg"
    categories = group_prompts(
        [
            TextPrompt("dog"),
            BoxPrompt((1, 2, 30, 40), label="dog"),
            PointPrompt((5, 5), image=other_image, label="cat"),
            TextPrompt("apple"),
            BoxPrompt((0, 0, 3, 3), label="dog", negative=True),
            TextPrompt("blur", negative=True),
        ]
    )
    names = [c.name for c in categories]
    assert names == ["dog", "cat", "apple"]
    dog, cat, apple = categories
    assert dog.kind == "mixed" and cat.kind == "visual" and apple.kind == "text"
    assert len(dog.negatives) == 2 and len(cat.negatives) == 1  # labelled + global / global only
    assert cat.describe()["visuals"][0]["image"] == other_image


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TextPrompt("   "), "empty"),
        (lambda: BoxPrompt((10, 10, 5, 20)), "zero or negative size"),
        (lambda: BoxPrompt((0, 0, 1)), "expected 4 numbers"),
        (lambda: PointPrompt((float("inf"), 1)), "finite"),
        (lambda: group_prompts([TextPrompt("x", negative=True)]), "no positive prompt"),
        (lambda: group_prompts([TextPrompt("a"), TextPrompt("b", label="zzz", negative=True)]), "zzz"),
    ],
)
def test_invalid_prompts_explain_themselves(make, message):
    with pytest.raises(PromptError, match=message):
        make()


def test_visual_prompts_must_lie_on_their_image():
    validate_visual_prompts([BoxPrompt((0, 0, 100, 50)), PointPrompt((99, 49))], (100, 50))
    # Prompts drawn on another image are checked when that image is loaded, not against this one.
    validate_visual_prompts([BoxPrompt((0, 0, 500, 500), image="other.png")], (100, 50))
    with pytest.raises(PromptError, match="outside the 100x50 image"):
        validate_visual_prompts([BoxPrompt((50, 10, 130, 40))], (100, 50))
    with pytest.raises(PromptError, match="outside"):
        validate_visual_prompts([PointPrompt((10, 70))], (100, 50))
