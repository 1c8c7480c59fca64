"""The locked text encoder: the real all-MiniLM-L6-v2 loads offline, behaves like a language model, stays
frozen while its projection trains, and its weights hash keys the embedding cache correctly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from regionprompt.errors import PromptError, RegionPromptError
from regionprompt.vl.embeddings import EmbeddingCache, PromptEmbedder
from regionprompt.vl.text import LockedTextConfig, LockedTextEncoder, TextEncoder, minilm_model_dir


@pytest.fixture(scope="module")
def encoder() -> LockedTextEncoder:
    torch.manual_seed(0)
    return LockedTextEncoder(LockedTextConfig(embed_dim=64))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=0))


def test_minilm_loads_offline_in_a_fresh_process() -> None:
    code = (
        "from regionprompt.vl.text import LockedTextEncoder, LockedTextConfig\n"
        "e = LockedTextEncoder(LockedTextConfig(embed_dim=32))\n"
        "print(tuple(e.encode_text(['a dog']).shape))\n"
    )
    # Point every hub variable at nowhere: any download attempt would fail (or hang on retries).
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME="/nonexistent/hf",
               HF_ENDPOINT="http://127.0.0.1:9")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "(1, 32)"


def test_raw_features_are_those_of_a_real_language_model(encoder: LockedTextEncoder) -> None:
    words = ["dog", "puppy", "bicycle", "car", "automobile", "banana", "a photo of a cat.", "a picture of a kitten."]
    f = dict(zip(words, encoder.lm_features(words)))
    assert f["dog"].shape == (384,)
    torch.testing.assert_close(torch.stack(list(f.values())).norm(dim=1), torch.ones(len(words)))
    assert _cos(f["dog"], f["puppy"]) > _cos(f["dog"], f["bicycle"]) + 0.2
    assert _cos(f["car"], f["automobile"]) > _cos(f["car"], f["banana"]) + 0.2
    assert _cos(f["a photo of a cat."], f["a picture of a kitten."]) > _cos(f["a photo of a cat."], f["banana"])


def test_features_match_sentence_transformers_pipeline(encoder: LockedTextEncoder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm_model_dir()), device="cpu")
    texts = ["a photo of a dog.", "red car", "an emoji of a smiling face with sunglasses"]
    expected = torch.as_tensor(reference.encode(texts, convert_to_numpy=True, normalize_embeddings=True))
    torch.testing.assert_close(encoder.lm_features(texts), expected, atol=1e-5, rtol=1e-4)


def test_encode_text_shape_normalisation_and_mode(encoder: LockedTextEncoder) -> None:
    assert isinstance(encoder, TextEncoder)
    encoder.train()
    out = encoder.encode_text(["dog", "a red bicycle", ""])
    assert out.shape == (3, 64) and out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert encoder.training and not encoder.language_model.training  # mode restored; the LM never trains
    assert encoder.encode_text([]).shape == (0, 64)
    with pytest.raises(PromptError, match="single string"):
        encoder.encode_text("dog")


def test_only_the_projection_trains(encoder: LockedTextEncoder) -> None:
    encoder.zero_grad()
    out = encoder(["a dog", "a cat", "a dog"])
    assert out.shape == (3, 64) and out.requires_grad
    out.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.projection.parameters())
    assert all(not p.requires_grad and p.grad is None for p in encoder.language_model.parameters())
    assert [n for n, _ in encoder.named_parameters()] == ["projection.weight", "projection.bias"]
    assert set(encoder.state_dict()) == {"projection.weight", "projection.bias"}  # the LM is not checkpointed
    encoder.zero_grad()


def test_untrained_linear_projection_preserves_lm_geometry() -> None:
    wide = LockedTextEncoder(LockedTextConfig(embed_dim=384, feature_cache_size=3))
    texts = ["dog", "puppy", "bicycle", "an apple"]
    lm = wide.lm_features(texts)
    assert len(wide._feature_cache) == 3  # bounded, least recently used dropped
    joint = wide.encode_text(texts)
    torch.testing.assert_close(joint @ joint.T, lm @ lm.T, atol=1e-5, rtol=0)


def test_mlp_projection() -> None:
    mlp = LockedTextEncoder(LockedTextConfig(embed_dim=48, hidden_dim=96))
    assert mlp(["dog"]).shape == (1, 48)
    assert sum(p.numel() for p in mlp.parameters()) == 384 * 96 + 96 + 96 * 48 + 48


def test_weights_hash_tracks_the_projection(encoder: LockedTextEncoder) -> None:
    before = encoder.weights_hash()
    assert before == encoder.weights_hash() and len(before) == 64
    with torch.no_grad():
        encoder.projection.bias[0] += 1.0
    assert encoder.weights_hash() != before
    with torch.no_grad():
        encoder.projection.bias[0] -= 1.0
    assert encoder.weights_hash() == before


def test_changing_the_projection_invalidates_cached_prompts(encoder: LockedTextEncoder, tmp_path: Path) -> None:
    embedder = PromptEmbedder(encoder, "emoji", EmbeddingCache(tmp_path / "c.sqlite"))
    first = embedder.embed(["dog", "cat"])
    embedder.embed(["dog", "cat"])
    assert embedder.last_stats is not None and embedder.last_stats.cache_hits == 2
    saved = encoder.projection.weight.detach().clone()
    with torch.no_grad():
        encoder.projection.weight.mul_(-1)  # "one training step later": every embedding flips sign
    flipped = embedder.embed(["dog", "cat"])
    assert embedder.last_stats.computed == 2
    torch.testing.assert_close(flipped, -first, atol=1e-5, rtol=0)
    with torch.no_grad():
        encoder.projection.weight.copy_(saved)
    torch.testing.assert_close(embedder.embed(["dog", "cat"]), first, atol=0, rtol=0)
    assert embedder.last_stats.cache_hits == 2


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RegionPromptError, match="no all-MiniLM-L6-v2 weights"):
        LockedTextEncoder(model_dir=tmp_path)


def test_the_language_model_loads_on_first_use():
    """Building the locked text encoder (and hashing it) reads no language model: a detector whose phrases
    are all in the embedding cache never imports transformers."""
    import subprocess
    import sys

    code = ("import sys\nimport torch\nfrom regionprompt.vl.text import LockedTextEncoder\n"
            "encoder = LockedTextEncoder().to(torch.float64)\nencoder.weights_hash()\n"
            "print('transformers' in sys.modules)\n"
            "features = encoder.lm_features(['a dog'])\n"
            "print('transformers' in sys.modules, features.shape[1] == encoder.lm_dim, encoder.language_model.dtype)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "False" and out[1] == "True True torch.float64", out
