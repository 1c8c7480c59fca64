"""Readers of other projects' files: OpenAI CLIP / open_clip checkpoints (:mod:`.checkpoints`), RegionCLIP's
released detectron2 checkpoints (:mod:`.regionclip_release`), without running code from them.

This package sits above the models: it imports them to fill them, and no model imports it.
"""
