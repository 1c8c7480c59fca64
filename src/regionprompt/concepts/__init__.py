"""Saved prompt concepts: a file format (:mod:`.files`) and a shared on-disk library (:mod:`.library`).

The concept type itself, :class:`regionprompt.concept.PromptConcept`, lives in the core; this package
only stores and moves concepts, so the server and the CLI can share one library safely.
"""

from __future__ import annotations

from regionprompt.concepts.files import (
    ConceptFileError,
    StoredConcept,
    load_concept,
    read_concept_file,
    save_concept,
)
from regionprompt.concepts.library import (
    ConceptExistsError,
    ConceptInfo,
    ConceptLibrary,
    ConceptLibraryError,
    ConceptNotFoundError,
    default_library_path,
)

__all__ = [
    "ConceptExistsError",
    "ConceptFileError",
    "ConceptInfo",
    "ConceptLibrary",
    "ConceptLibraryError",
    "ConceptNotFoundError",
    "StoredConcept",
    "default_library_path",
    "load_concept",
    "read_concept_file",
    "save_concept",
]
