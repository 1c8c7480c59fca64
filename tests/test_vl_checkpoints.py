"""Real checkpoint formats round-trip with identical outputs; bad files give clear CheckpointErrors.

Random models of the real RN50 and ViT-B/32 architectures are written the way each ecosystem writes them:
OpenAI's TorchScript release archive (traced, float16, with its extra ``input_resolution`` /
``context_length`` / ``vocab_size`` entries), OpenAI's plain state dict (partially float16), open_clip's
training checkpoint (``{"epoch", "state_dict": {"module.*"}, "optimizer"}``), open_clip's ``.bin`` and
``.safetensors``, and our own directory. All weights are first rounded through float16 so every format
holds exactly the same values.
"""

from __future__ import annotations

import pickle
import shutil
import zipfile

import pytest
import torch
from open_clip.model import CLIP, convert_weights_to_lp
from PIL import Image
from safetensors.torch import save_file

from regionprompt.errors import CheckpointError, RegionPromptError
from regionprompt.interop.checkpoints import infer_card, load_checkpoint, read_state_dict
from regionprompt.vl.cards import load_card
from regionprompt.vl.clip_model import RegionPromptCLIP, build_clip

TEXTS = ["a photo of a dog.", "two red apples"]


class Reference:
    """A random OpenAI-style model, its open_clip twin and the embeddings every reload must reproduce."""

    def __init__(self, name: str, seed: int) -> None:
        torch.manual_seed(seed)
        self.card = load_card(name).with_updates(quick_gelu=True)
        self.model = build_clip(self.card).eval()
        with torch.no_grad():
            for tensor in self.model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())
        self.images = torch.rand(2, 3, 64, 64)
        self.image_emb, self.text_emb = embeddings(self.model, self.images)

    def fp32_state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}


def open_clip_twin(ref: Reference) -> CLIP:
    """open_clip's own CLIP holding the reference weights (built on the meta device: no random init)."""
    with torch.device("meta"):
        twin = CLIP(**ref.card.to_open_clip_config())
    twin.to_empty(device="cpu")
    twin.load_state_dict(ref.model.state_dict())
    twin.attn_mask = ref.model.attn_mask.clone()
    return twin.eval()


def embeddings(model: RegionPromptCLIP, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(images), model.text_encoder().encode_text(TEXTS)


@pytest.fixture(scope="module")
def references() -> dict[str, Reference]:
    return {"RN50": Reference("RN50", seed=7), "ViT-B-32": Reference("ViT-B-32", seed=8)}


# ---- writers, one per format -------------------------------------------------------------------


def write_openai_torchscript(ref: Reference, path) -> None:
    twin = open_clip_twin(ref)
    # OpenAI's archives carry these as entries of the module; loaders must ignore them.
    del twin.context_length, twin.vocab_size  # plain ints on open_clip's CLIP
    twin.register_buffer("input_resolution", torch.tensor(ref.card.vision.image_size))
    twin.register_buffer("context_length", torch.tensor(ref.card.text.context_length))
    twin.register_buffer("vocab_size", torch.tensor(ref.card.text.vocab_size))
    # Tracing encode_text only keeps the test fast: the archive still holds every module and weight (the
    # reader never looks at the compiled code), and OpenAI's vision code paths need full-size inputs.
    traced = torch.jit.trace_module(
        twin,
        {"encode_text": (torch.zeros(1, ref.card.text.context_length, dtype=torch.long),)},
        check_trace=False,
    )
    traced.half()  # the released archives store float16 weights
    torch.jit.save(traced, str(path))


def write_openai_state_dict(ref: Reference, path) -> None:
    twin = open_clip_twin(ref)
    convert_weights_to_lp(twin)  # OpenAI's partial float16 conversion (convs, linears, projections)
    torch.save(twin.state_dict(), path)


def write_open_clip_training_checkpoint(ref: Reference, path) -> None:
    state = {f"module.{k}": v for k, v in ref.fp32_state().items()}  # saved from a DDP-wrapped model
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-3, "weight_decay": 0.2, "params": [0, 1]}]}
    torch.save({"epoch": 32, "name": "run", "state_dict": state, "optimizer": optimizer}, path)


def write_open_clip_bin(ref: Reference, path) -> None:
    torch.save(ref.fp32_state(), path)


def write_safetensors(ref: Reference, path) -> None:
    save_file(ref.fp32_state(), str(path))


def write_own_directory(ref: Reference, path) -> None:
    ref.model.save(path)


WRITERS = {
    "openai.pt (TorchScript)": (write_openai_torchscript, "model.pt"),
    "openai.pt (state dict)": (write_openai_state_dict, "model.pt"),
    "open_clip epoch_32.pt": (write_open_clip_training_checkpoint, "epoch_32.pt"),
    "open_clip_pytorch_model.bin": (write_open_clip_bin, "open_clip_pytorch_model.bin"),
    "open_clip_model.safetensors": (write_safetensors, "open_clip_model.safetensors"),
    "regionprompt directory": (write_own_directory, "model_dir"),
}


# Every format with RN50; ViT-B/32 in the formats OpenAI released it in. The other formats share one code
# path whatever the architecture, and each RN50/ViT-B-32 round trip moves ~0.5 GB.
ROUND_TRIPS = [("RN50", fmt) for fmt in WRITERS] + [
    ("ViT-B-32", fmt) for fmt in ("openai.pt (TorchScript)", "openai.pt (state dict)")
]


@pytest.mark.slow
@pytest.mark.parametrize("arch, fmt", ROUND_TRIPS)
def test_checkpoint_round_trip_gives_identical_embeddings(references, arch, fmt, tmp_path, monkeypatch) -> None:
    reference = references[arch]
    writer, filename = WRITERS[fmt]
    path = tmp_path / filename
    writer(reference, path)

    def no_jit_load(*args, **kwargs):
        raise AssertionError("torch.jit.load executes archive code and must not be used")

    monkeypatch.setattr(torch.jit, "load", no_jit_load)
    try:
        # OpenAI files (and our directory's card) say QuickGELU; open_clip files would default to GELU
        # (see test_activation_default_follows_file_origin), so those are loaded with the flag.
        openai_origin = fmt.startswith("openai") or fmt == "regionprompt directory"
        loaded = load_checkpoint(path) if openai_origin else load_checkpoint(path, quick_gelu=True)
        assert loaded.card.same_architecture(reference.card)  # inferred from the weights alone
        assert loaded.card.quick_gelu
        image_emb, text_emb = embeddings(loaded, reference.images)
        torch.testing.assert_close(image_emb, reference.image_emb, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(text_emb, reference.text_emb, atol=2e-5, rtol=1e-4)
        if fmt == "regionprompt directory":
            assert loaded.text_encoder().weights_hash() == reference.model.text_encoder().weights_hash()
    finally:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_inferred_card_matches_the_standard_cards(references) -> None:
    for name, reference in references.items():
        assert infer_card(reference.model.state_dict()).same_architecture(load_card(name))


# ---- errors ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> RegionPromptCLIP:
    torch.manual_seed(11)
    return build_clip("RN-tiny").eval()


def test_architecture_mismatch_names_tensor_and_shapes(tiny, tmp_path) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    wider = load_card("RN-tiny").with_updates(
        name="RN-tiny-wide", vision=load_card("RN-tiny").vision.__class__(image_size=128, width=64, layers=(1, 1, 1, 1))
    )
    with pytest.raises(CheckpointError, match=r"architecture mismatch.*visual\.conv1\.weight: \(16, 3, 3, 3\) in the file, \(32, 3, 3, 3\) in the model"):
        load_checkpoint(path, wider)
    with pytest.raises(CheckpointError, match=r"card 'ViT-tiny'.*the file holds ResNet layers \(1, 1, 1, 1\) width 32"):
        load_checkpoint(path, "ViT-tiny")
    tiny.save(tmp_path / "dir")
    with pytest.raises(CheckpointError, match="saved model is 'RN-tiny'"):
        load_checkpoint(tmp_path / "dir", "ViT-tiny")


def test_missing_and_extra_keys_are_listed(tiny, tmp_path) -> None:
    state = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    del state["visual.layer2.0.bn1.weight"]
    state["visual.adapter.weight"] = torch.zeros(3)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "1 missing keys (e.g. visual.layer2.0.bn1.weight)" in message
    assert "1 unexpected keys (e.g. visual.adapter.weight)" in message
    assert str(path) in message


def test_activation_default_follows_file_origin(tiny, tmp_path) -> None:
    fp32 = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    save_file(fp32, str(tmp_path / "open_clip.safetensors"))
    assert not load_checkpoint(tmp_path / "open_clip.safetensors").card.quick_gelu  # open_clip default: GELU
    assert load_checkpoint(tmp_path / "open_clip.safetensors", quick_gelu=True).card.quick_gelu
    torch.save({**fp32, "input_resolution": torch.tensor(128)}, tmp_path / "openai.pt")  # OpenAI's marker entry
    assert load_checkpoint(tmp_path / "openai.pt").card.quick_gelu
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in fp32.items()}, tmp_path / "fp16.pt")
    assert load_checkpoint(tmp_path / "fp16.pt").card.quick_gelu


def test_missing_batchnorm_counters_are_tolerated(tiny, tmp_path) -> None:
    state = {k: v.contiguous() for k, v in tiny.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(tmp_path / "m.safetensors"))
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    torch.testing.assert_close(loaded.visual.conv1.weight, tiny.visual.conv1.weight)


@pytest.mark.parametrize("kind", ["torch zip", "torchscript", "safetensors"])
def test_truncated_files(tiny, tmp_path, kind) -> None:
    path = tmp_path / "model.pt"
    if kind == "torch zip":
        torch.save(tiny.state_dict(), path)
    elif kind == "safetensors":
        save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    else:
        twin = CLIP(**tiny.card.to_open_clip_config()).eval()
        tokens = torch.zeros(1, tiny.card.text.context_length, dtype=torch.long)
        torch.jit.save(torch.jit.trace_module(twin, {"encode_text": (tokens,)}, check_trace=False), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_non_checkpoint_files(tmp_path) -> None:
    jpeg = tmp_path / "photo.pt"
    Image.new("RGB", (8, 8), "red").save(jpeg, format="JPEG")
    text = tmp_path / "notes.bin"
    text.write_text("these are not weights\n")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for path, what in ((jpeg, "a JPEG image"), (text, "a text file"), (empty, "an empty file")):
        with pytest.raises(CheckpointError, match=f"not a checkpoint, it is {what}"):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    zipped = tmp_path / "archive.pt"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(zipped)


def test_foreign_pickles_are_never_executed(tmp_path) -> None:
    # A torch.save file with a non-tensor object: weights_only refuses, we report it.
    import datetime

    obj_file = tmp_path / "objects.pt"
    torch.save({"created": datetime.date(2024, 1, 1), "w": torch.zeros(1)}, obj_file)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(obj_file)
    # A fake TorchScript archive whose data.pkl references os.system: refused before anything runs.
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("evil/data.pkl", b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
        archive.writestr("evil/constants.pkl", pickle.dumps(()))
        archive.writestr("evil/code/__torch__/m.py", "")
    with pytest.raises(CheckpointError, match="refusing to load os.system"):
        load_checkpoint(evil)


def test_non_clip_state_dict_is_reported(tmp_path) -> None:
    path = tmp_path / "detector.pth"
    torch.save({"backbone.res2.0.conv1.weight": torch.zeros(2, 2), "roi_heads.box_predictor.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a CLIP state dict: missing text_projection"):
        load_checkpoint(path)
    state, fmt = read_state_dict(path)
    assert fmt == "torch" and set(state) == {"backbone.res2.0.conv1.weight", "roi_heads.box_predictor.weight"}


def test_unknown_card_name_is_a_checkpoint_error(tmp_path) -> None:
    with pytest.raises(RegionPromptError, match="unknown model card"):
        load_checkpoint(tmp_path / "x.pt", "RN-nonexistent")
