"""Real-size speed against the peers, in one process: our T-Rex2 and RegionCLIP zero-shot detectors at
their published sizes vs OWL-ViT B/32, OWLv2 B/16 and GroundingDINO-T (HF transformers, the `bench` extra).

Usage::

    python benchmarks/bench_peers.py          # short (a few minutes): T-Rex2 vs OWL-ViT B/32, 80 cached prompts
    python benchmarks/bench_peers.py --systems trex2 trex2-bf16 regionclip owlvit owlv2 gdino \
        --text cached re-embedded --prompts 80 1203 --threads 1 2 --rounds 5     # = --full (hours)

Every model is built from its config with random weights (nothing is downloaded), so the times compare
exactly what the architectures cost; the detections themselves mean nothing. Each row is one
(system, prompt count, text mode); the rows are timed in interleaved rounds (every row once per round,
so a load spike hits all of them alike) and the median of the rounds is reported, after one warm-up call.
One call = one image -> boxes and scores for every prompt:

* ``text cached``: the prompt embeddings are ready (our detectors: the persistent text-embedding cache,
  looked up on every call as ``Detector.predict(text=...)`` does; OWL: text embeddings computed once).
  GroundingDINO fuses text and image inside its encoder, so it has no cached mode;
* ``text re-embedded``: the text side runs on every call (ours: ``cache=None``).

GroundingDINO reads at most 256 text tokens per forward pass, so a large vocabulary is split into chunks
of whole names, one full forward pass each (as its LVIS evaluation does).

Columns: median seconds per image, the ratio to the first row of the same prompt count and threads,
GFLOPs of one call (``torch.utils.flop_counter``: matmuls and convolutions), the fraction of the
machine's measured float32 matmul peak that the call reaches (``FLOPs / time / peak``), and peak RSS:
the process's resident memory at its highest during the row's calls, less what the other systems'
weights occupy (so each row counts its own weights plus working memory).
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from regionprompt.api import Detector
from regionprompt.detect.detectron2_rpn import C4_ANCHOR_SIZES, Detectron2RPN, Detectron2RpnCard
from regionprompt.detect.regionclip import ZeroShotConfig
from regionprompt.detect.trex2_engine import TRex2DetectConfig
from regionprompt.trex2 import TRex2, TRex2Card, build_trex2
from regionprompt.vl.cards import load_card
from regionprompt.vl.clip_model import build_clip
from regionprompt.vl.embeddings import EmbeddingCache
from regionprompt.world.concepts import load_concepts

try:
    import transformers
except ImportError:  # the peers are optional: install the `bench` extra
    transformers = None

#: T-Rex2 as published (DINO-sized transformer on a CLIP RN50 backbone, 800 px input).
TREX2_REAL = dict(image_size=800, dim=256, heads=8, points=4, encoder_layers=6, decoder_layers=6, prompt_layers=3,
                  ffn_dim=2048, num_queries=900)
#: RegionCLIP's zero-shot LVIS/COCO test setting: RN50 C4 RoI head on an 800 px input, 1,000 proposals of
#: a detectron2 R50-C4 RPN (detectron2's C4 test defaults: 6,000 pre-NMS, 1,000 post-NMS).
REGIONCLIP_INPUT, REGIONCLIP_PROPOSALS = 800, 1000

Call = Callable[[], object]


@dataclass
class Row:
    system: str
    prompts: int
    text: str
    call: Call
    weights_mb: float
    times: list[float] = field(default_factory=list)
    gflops: float = math.nan
    peak_mb: float = math.nan


def rss_mb(kind: str = "VmRSS") -> float:
    """Current (``VmRSS``) or peak (``VmHWM``) resident memory of this process in MB (Linux)."""
    match = re.search(rf"^{kind}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else math.nan


def reset_peak_rss() -> None:
    """Restart ``VmHWM`` from the current RSS (Linux: writing 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the peak then covers the whole process so far (column stays honest, just coarser)
        return


def module_mb(*modules: torch.nn.Module) -> float:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()]) / 2**20


def matmul_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of a ``size`` square matmul with this many threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _seconds(call: Call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def vocabulary(count: int) -> list[str]:
    """``count`` distinct names: EmojiWorld's concept names, numbered again when more are asked."""
    names = [c.name for c in load_concepts()]
    return [names[i % len(names)] + ("" if i < len(names) else f" {i // len(names) + 1}") for i in range(count)]


# ---- our detectors ---------------------------------------------------------------------------------

@functools.cache
def real_size_trex2() -> TRex2:
    """One real-size T-Rex2 (random weights) shared by the float32 and bfloat16 rows."""
    return inference_only(build_trex2(TRex2Card(clip=load_card("RN50"), **TREX2_REAL), seed=0))


def trex2_rows(image: torch.Tensor, counts: list[int], cache: EmbeddingCache, *, bfloat16: bool) -> list[Row]:
    model = real_size_trex2()
    config = TRex2DetectConfig(precision="bfloat16" if bfloat16 else "float32")
    cached = Detector.from_trex2(model, config, cache=cache)
    fresh = Detector.from_trex2(model, config, cache=None)
    name = "T-Rex2 RN50 800px" + (" bf16" if bfloat16 else "")
    mb = module_mb(model)
    rows = []
    for count in counts:
        names = vocabulary(count)
        rows.append(Row(name, count, "cached", lambda n=names: cached.predict(image, text=n, threshold=0.0), mb))
        rows.append(Row(name, count, "re-embedded", lambda n=names: fresh.predict(image, text=n, threshold=0.0), mb))
    return rows


def regionclip_rows(image: torch.Tensor, counts: list[int], cache: EmbeddingCache) -> list[Row]:
    clip = inference_only(build_clip("RN50"))
    rpn = Detectron2RPN(Detectron2RpnCard(arch="c4", bottleneck_widths=(64, 128, 256), out_widths=(256, 512, 1024),
                                          blocks=(3, 4, 6), anchor_sizes=C4_ANCHOR_SIZES, pre_nms_topk=6000,
                                          post_nms_topk=REGIONCLIP_PROPOSALS))
    inference_only(rpn)
    config = ZeroShotConfig(input_size=REGIONCLIP_INPUT, max_proposals=REGIONCLIP_PROPOSALS, background="none")
    cached = Detector.from_models(clip, rpn, config, cache=cache)
    fresh = Detector.from_models(clip, rpn, config, cache=None)
    mb = module_mb(clip, rpn)
    rows = []
    for count in counts:
        names = vocabulary(count)
        rows.append(Row("RegionCLIP RN50-C4 1k props", count, "cached",
                        lambda n=names: cached.predict(image, text=n, threshold=0.0), mb))
        rows.append(Row("RegionCLIP RN50-C4 1k props", count, "re-embedded",
                        lambda n=names: fresh.predict(image, text=n, threshold=0.0), mb))
    return rows


# ---- peers (transformers) ------------------------------------------------------------------------

def _token_ids(count: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1000, 30000, (count, length), generator=generator)


def owl_rows(counts: list[int], *, v2: bool) -> list[Row]:
    """OWL-ViT B/32 (768 px) or OWLv2 B/16 (960 px); every query is 16 tokens (their padding length)."""
    if v2:
        config = transformers.Owlv2Config(vision_config={"image_size": 960, "patch_size": 16})
        model, name = inference_only(transformers.Owlv2ForObjectDetection(config)), "OWLv2 B/16 960px"
    else:
        config = transformers.OwlViTConfig(vision_config={"image_size": 768, "patch_size": 32})
        model, name = inference_only(transformers.OwlViTForObjectDetection(config)), "OWL-ViT B/32 768px"
    size = config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size)
    rows = []
    for count in counts:
        ids = _token_ids(count, 16, count)
        mask = torch.ones_like(ids)

        def full(ids=ids, mask=mask) -> object:
            return model(input_ids=ids, pixel_values=pixels, attention_mask=mask)

        text = model.owlvit if not v2 else model.owlv2
        features = text.get_text_features(input_ids=ids, attention_mask=mask)
        features = features if isinstance(features, torch.Tensor) else features.pooler_output
        queries = features[None]
        query_mask = torch.ones(1, count, dtype=torch.bool)

        def cached(queries=queries, query_mask=query_mask) -> object:
            feature_map = model.image_embedder(pixel_values=pixels)[0]
            b, h, w, d = feature_map.shape
            feats = feature_map.reshape(b, h * w, d)
            logits = model.class_predictor(feats, queries, query_mask)[0]
            return logits, model.box_predictor(feats, feature_map)

        rows.append(Row(name, count, "cached", cached, module_mb(model)))
        rows.append(Row(name, count, "re-embedded", full, module_mb(model)))
    return rows


def gdino_rows(counts: list[int]) -> list[Row]:
    """GroundingDINO-T (Swin-T, BERT-base, 800 x 1333 input): names joined by " . ", <= 256 tokens a pass."""
    model = inference_only(transformers.GroundingDinoForObjectDetection(transformers.GroundingDinoConfig()))
    pixels = torch.randn(1, 3, 800, 1333)
    rows = []
    for count in counts:
        chunks = _gdino_chunks(vocabulary(count), model.config.max_text_len)

        def call(chunks=chunks) -> object:
            return [model(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids),
                          token_type_ids=torch.zeros_like(ids)) for ids in chunks]

        rows.append(Row(f"GroundingDINO-T 800x1333 ({len(chunks)} pass{'es' if len(chunks) > 1 else ''})",
                        count, "re-embedded", call, module_mb(model)))
    return rows


def _gdino_chunks(names: list[str], max_tokens: int) -> list[torch.Tensor]:
    """Token ids ``[CLS] name . name . ... [SEP]`` per chunk; a name costs its words + 1 (the ``.``) tokens
    (ids are random: the cost depends on the count only). 101/102/1012: BERT's [CLS]/[SEP]/"."."""
    chunks, current = [], []
    for index, name in enumerate(names):
        cost = len(name.split()) + 1
        if current and len(current) + cost + 2 > max_tokens:
            chunks.append(current)
            current = []
        current += torch.randint(2000, 29000, (cost - 1,), generator=torch.Generator().manual_seed(index)).tolist()
        current.append(1012)
    chunks.append(current)
    return [torch.tensor([[101, *ids, 102]]) for ids in chunks]


# ---- measuring -----------------------------------------------------------------------------------

def inference_only(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, no parameter requiring gradients (FlopCounterMode's module hooks fail on views of such
    parameters taken under no_grad)."""
    return model.eval().requires_grad_(False)


def count_flops(row: Row) -> None:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        row.call()
    row.gflops = counter.get_total_flops() / 1e9


def run_rounds(rows: list[Row], rounds: int, total_weights_mb: float) -> None:
    with torch.no_grad():
        for _ in range(rounds):
            for row in rows:
                gc.collect()
                reset_peak_rss()
                row.times.append(_seconds(row.call))
                peak = rss_mb("VmHWM") - (total_weights_mb - row.weights_mb)
                row.peak_mb = peak if math.isnan(row.peak_mb) else max(row.peak_mb, peak)


def table(rows: list[Row], threads: int, peak_gflops: float) -> str:
    lines = [f"\n{threads} thread(s); measured float32 matmul peak {peak_gflops:.0f} GFLOP/s",
             "| system | prompts | text | s / image (median) | vs first row | GFLOPs | % of peak | peak RSS MB |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    first = {}
    for row in rows:
        median = statistics.median(row.times)
        base = first.setdefault(row.prompts, median)
        share = row.gflops / median / peak_gflops * 100
        lines.append(f"| {row.system} | {row.prompts} | {row.text} | {median:.2f} | {median / base:.2f}x | "
                     f"{row.gflops:.0f} | {share:.0f} % | {row.peak_mb:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    systems = ["trex2", "trex2-bf16", "regionclip", "owlvit", "owlv2", "gdino"]
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--prompts", type=int, nargs="+", default=[80])
    parser.add_argument("--text", nargs="+", default=["cached"], choices=["cached", "re-embedded"])
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per row (median reported)")
    parser.add_argument("--systems", nargs="+", default=["trex2", "owlvit"], choices=systems)
    parser.add_argument("--full", action="store_true",
                        help="every system and text mode, 1 and 2 threads, 80 and 1,203 prompts, 5 rounds (hours)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra call per row)")
    args = parser.parse_args()
    if args.full:
        args.systems, args.text, args.threads, args.prompts, args.rounds = systems, ["cached", "re-embedded"], [1, 2], [80, 1203], 5
    peers = {"owlvit", "owlv2", "gdino"} & set(args.systems)
    if peers and transformers is None:
        sys.exit("bench_peers needs HF transformers for the peers: pip install 'regionprompt[bench]' "
                 f"(or drop {sorted(peers)} from --systems)")
    torch.manual_seed(0)
    image = torch.rand(3, 800, 800)
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp) / "embeddings.sqlite")
        builders = {
            "trex2": lambda: trex2_rows(image, args.prompts, cache, bfloat16=False),
            "trex2-bf16": lambda: trex2_rows(image, args.prompts, cache, bfloat16=True),
            "regionclip": lambda: regionclip_rows(image, args.prompts, cache),
            "owlvit": lambda: owl_rows(args.prompts, v2=False),
            "owlv2": lambda: owl_rows(args.prompts, v2=True),
            "gdino": lambda: gdino_rows(args.prompts),
        }
        rows = [row for system in args.systems for row in builders[system]() if row.text in args.text]
        rows.sort(key=lambda r: r.prompts)  # one block per prompt count, systems in the order asked
        weights = sum({r.system.split(" (")[0].replace(" bf16", ""): r.weights_mb for r in rows}.values())
        print(f"bench_peers: {' '.join(sys.argv[1:]) or '(defaults)'}; torch {torch.__version__}, "
              f"transformers {getattr(transformers, '__version__', 'missing')}; rounds {args.rounds}")
        for threads in args.threads:
            peak = matmul_peak_gflops(threads)
            torch.set_num_threads(threads)
            with torch.no_grad():
                for row in rows:  # warm-up: allocator, oneDNN primitives, the embedding cache
                    row.call()
            if not args.no_flops and math.isnan(rows[0].gflops):
                for row in rows:
                    count_flops(row)
            for row in rows:
                row.times, row.peak_mb = [], math.nan
            run_rounds(rows, args.rounds, weights)
            print(table(rows, threads, peak), flush=True)


if __name__ == "__main__":
    main()
