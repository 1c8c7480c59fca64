"""Vision-language core: CLIP image/text encoders, our own model directories and prompt embeddings.

Modules (import them directly; this package imports nothing heavy on its own):

* :mod:`regionprompt.vl.cards` -- :class:`ModelCard` (JSON model cards; shipped: RN50, ViT-B-32, RN-tiny, ViT-tiny).
* :mod:`regionprompt.vl.image_encoder` -- CLIP image towers as feature extractors (``stem``..``res5`` maps,
  RoI region pooling through ``res5`` + attention pool; ViT patch tokens).
* :mod:`regionprompt.vl.clip_model` -- :class:`RegionPromptCLIP`, :func:`build_clip`, :class:`ClipTextEncoder`,
  save/load of our own ``card.json`` + ``model.safetensors`` directories.
* :mod:`regionprompt.vl.text` -- the :class:`TextEncoder` protocol and the locked MiniLM text encoder.

Other projects' files (OpenAI CLIP, open_clip, RegionCLIP releases) are read by :mod:`regionprompt.interop`
(:func:`~regionprompt.interop.checkpoints.load_checkpoint`), which sits above this package.
"""
