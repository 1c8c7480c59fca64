"""English helpers for captions: plurals, indefinite articles and number words.

A small rule set tuned to emoji concept names, which are noun phrases such as ``"slice of pizza"``,
``"man juggling"``, ``"face with tears of joy"`` or plural-form names such as ``"grapes"`` and
``"glasses"``. The head noun is:

* the word before a participle that follows a person/face word (``"man juggling"`` -> ``man``);
* else the word before the first preposition (``"slice of pizza"`` -> ``slice``);
* else the last word.

Names whose head is already plural are counted as sets (``"some grapes"``, ``"two sets of grapes"``),
and pair nouns as pairs (``"a pair of glasses"``).
"""

from __future__ import annotations

_IRREGULAR: dict[str, str] = {
    "man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice",
    "goose": "geese", "tooth": "teeth", "foot": "feet", "ox": "oxen", "louse": "lice", "die": "dice",
    "knife": "knives", "leaf": "leaves", "wolf": "wolves", "loaf": "loaves", "half": "halves",
    "scarf": "scarves", "shelf": "shelves", "elf": "elves", "calf": "calves", "life": "lives",
    "wife": "wives", "thief": "thieves", "cactus": "cacti", "fungus": "fungi",
    "potato": "potatoes", "tomato": "tomatoes", "mango": "mangoes", "volcano": "volcanoes",
    "tornado": "tornadoes", "domino": "dominoes", "hero": "heroes", "superhero": "superheroes",
    "torpedo": "torpedoes", "bus": "buses", "minibus": "minibuses", "trolleybus": "trolleybuses",
    "octopus": "octopuses", "platypus": "platypuses", "hippopotamus": "hippopotamuses",
    "rhinoceros": "rhinoceroses", "abacus": "abacuses", "hibiscus": "hibiscuses", "lotus": "lotuses",
    "index": "indexes", "axis": "axes", "moai": "moai",
}
_IRREGULAR_PLURALS: frozenset[str] = frozenset(_IRREGULAR.values()) - {"moai"}
_MAN_NOT_COMPOUND: frozenset[str] = frozenset({"human", "german", "shaman", "caiman", "talisman", "ottoman", "doberman", "roman"})
# Same word in singular and plural.
_INVARIANT: frozenset[str] = frozenset({
    "fish", "sheep", "deer", "bison", "moose", "shrimp", "squid", "salmon", "series", "species",
    "aircraft", "spacecraft", "sushi", "tofu", "kimono", "sari", "tempura",
})
# Singular words that end in "s" (so they are not mistaken for plurals).
_SINGULAR_S: frozenset[str] = frozenset({
    "bus", "minibus", "trolleybus", "abacus", "cactus", "octopus", "platypus", "hippopotamus",
    "rhinoceros", "hibiscus", "lotus", "tennis", "chess", "vhs", "claus", "christmas", "americas",
    "atlas", "canvas", "gas", "iris", "asparagus", "walrus", "virus", "compass", "bonus", "circus",
    "billiards", "lens", "mrs", "mx", "mrs.", "news", "physics", "taurus",
    "sagittarius", "aquarius", "pisces", "aries", "gemini", "ophiuchus", "series", "species",
})
# Uncountable food words: "some curry rice", "two portions of curry rice".
_MASS: frozenset[str] = frozenset({
    "rice", "bread", "spaghetti", "popcorn", "butter", "salt", "meat", "food", "garlic", "ginger",
    "broccoli", "oden", "fondue", "curry", "bacon", "honey", "milk",
})
# Participles used as names ("locked") do not take a plural "s".
_ED_NOUNS: frozenset[str] = frozenset({"bed", "sled", "shed", "seed", "weed", "reed", "steed", "speed"})
# Plural-only things counted in pairs: "a pair of ..." / "two pairs of ...".
_PAIR_WORDS: frozenset[str] = frozenset({
    "glasses", "sunglasses", "eyeglasses", "goggles", "socks", "gloves", "jeans", "shorts", "trousers",
    "pants", "chopsticks", "scissors", "pliers", "tongs", "shoes", "boots", "skates", "skis",
    "headphones", "earmuffs", "binoculars", "sandals", "slippers", "sneakers", "mittens", "eyes",
    "lungs", "lips", "hands", "briefs", "maracas", "dice",
})
_PREPOSITIONS: frozenset[str] = frozenset({
    "of", "with", "in", "on", "for", "at", "from", "without", "under", "over", "and", "by", "into",
    "up", "down", "showing",
})
# Words after which a participle ("man juggling", "face vomiting") leaves the head noun in place.
_AGENTS: frozenset[str] = frozenset({
    "man", "woman", "person", "men", "women", "people", "face", "boy", "girl", "child", "adult",
    "baby", "cat", "dog", "globe", "hand", "merperson", "fairy", "vampire", "zombie", "elf", "genie",
})
_VOWEL_SOUND_EXCEPTIONS_AN: tuple[str, ...] = ("hour", "honest", "honor", "honour", "heir")
_CONSONANT_SOUND_EXCEPTIONS_A: tuple[str, ...] = ("uni", "use", "usa", "usb", "euro", "one", "once", "ufo", "ukulele", "utensil")

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
)


def _is_plural_word(word: str) -> bool:
    lower = word.lower()
    if lower in _IRREGULAR_PLURALS or lower in _PAIR_WORDS:
        return True
    if lower in _SINGULAR_S or lower in _INVARIANT or lower in _IRREGULAR:
        return False
    return lower.endswith("s") and not lower.endswith(("ss", "us", "is", "'s"))


def _plural_word(word: str) -> str:
    lower = word.lower()
    if lower in _INVARIANT or lower in _MASS or _is_plural_word(word):
        return word
    if lower.endswith("ed") and lower not in _ED_NOUNS:
        return word
    if lower in _IRREGULAR:
        return _IRREGULAR[lower]
    if lower.endswith("man") and lower not in _MAN_NOT_COMPOUND:
        return word[:-3] + "men"  # snowman -> snowmen
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _head_index(words: list[str]) -> int:
    lowered = [w.lower() for w in words]
    for i in range(1, len(words)):
        if lowered[i].endswith("ing") and lowered[i - 1] in _AGENTS:
            return i - 1
    for i in range(1, len(words)):
        if lowered[i] in _PREPOSITIONS:
            return i - 1
    return len(words) - 1


def _head(phrase: str) -> str:
    words = phrase.split()
    return words[_head_index(words)].lower() if words else ""


def is_pair_noun(phrase: str) -> bool:
    """Whether ``phrase`` names a pair-only thing such as ``"glasses"`` or ``"running shoes"``."""
    return _head(phrase) in _PAIR_WORDS


def is_plural_form(phrase: str) -> bool:
    """Whether ``phrase`` is grammatically plural already (``"grapes"``, ``"two hearts"``, ``"glasses"``)."""
    words = phrase.lower().split()
    if not words:
        return False
    # "women and man holding hands", "two hearts": a leading plural makes the whole name a group.
    return _is_plural_word(_head(phrase)) or words[0] in _IRREGULAR_PLURALS or words[0] in NUMBER_WORDS[2:]


def is_mass_noun(phrase: str) -> bool:
    """Whether ``phrase`` is uncountable food (``"curry rice"``), counted in portions."""
    return _head(phrase) in _MASS


def pluralize(phrase: str) -> str:
    """Plural of a noun phrase: ``"slice of pizza"`` -> ``"slices of pizza"``, ``"man juggling"`` -> ``"men juggling"``."""
    words = phrase.split()
    if not words:
        return phrase
    head = _head_index(words)
    words[head] = _plural_word(words[head])
    return " ".join(words)


def indefinite_article(phrase: str) -> str:
    """``"a"`` or ``"an"`` for the phrase, by the sound of its first word."""
    original = phrase.split()[0] if phrase.split() else ""
    word = original.lower()
    if len(original) > 1 and original.isupper():
        # Acronyms read letter by letter: "an SOS button", "a TV".
        return "an" if word[0] in "aefhilmnorsx" else "a"
    if word.startswith(_VOWEL_SOUND_EXCEPTIONS_AN):
        return "an"
    if word.startswith(_CONSONANT_SOUND_EXCEPTIONS_A):
        return "a"
    return "an" if word[:1] in "aeiou" else "a"


def count_phrase(phrase: str, count: int) -> str:
    """``phrase`` with its count.

    ``"a dog"`` / ``"two dogs"``; pairs: ``"a pair of glasses"`` / ``"three pairs of glasses"``; plural-form
    names: ``"some grapes"`` / ``"two sets of grapes"`` (``"two hearts"`` stays as is for one); uncountable
    food: ``"some curry rice"`` / ``"two portions of curry rice"``.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if is_pair_noun(phrase):
        return f"a pair of {phrase}" if count == 1 else f"{number_word(count)} pairs of {phrase}"
    if is_mass_noun(phrase):
        return f"some {phrase}" if count == 1 else f"{number_word(count)} portions of {phrase}"
    if is_plural_form(phrase):
        if count > 1:
            return f"{number_word(count)} sets of {phrase}"
        first = phrase.split()[0].lower()
        return phrase if first in NUMBER_WORDS or first == "the" else f"some {phrase}"
    if count == 1:
        return f"{indefinite_article(phrase)} {phrase}"
    return f"{number_word(count)} {pluralize(phrase)}"


def number_word(count: int) -> str:
    """English word for small counts (``2`` -> ``"two"``); digits above twelve."""
    return NUMBER_WORDS[count] if 0 <= count < len(NUMBER_WORDS) else str(count)


def join_list(items: list[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
