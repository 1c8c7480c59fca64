"""T-Rex2: a promptable detector (text, box and point prompts) in plain PyTorch.

Parts, in data-flow order: :mod:`.encoder` (backbone maps -> deformable encoder), :mod:`.prompt_encoder`
(visual prompts -> embeddings; text projection), :mod:`.decoder` (prompt-driven query selection, DINO
decoder, similarity classifier), :mod:`.denoising`, :mod:`.matcher`, :mod:`.losses`; :mod:`.model`
assembles them into :class:`TRex2`, described by a :class:`TRex2Card`.
"""

from regionprompt.trex2.card import TRex2Card
from regionprompt.trex2.model import QueryDetections, TRex2, build_trex2

__all__ = ["QueryDetections", "TRex2", "TRex2Card", "build_trex2"]
