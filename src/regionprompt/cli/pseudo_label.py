"""``regionprompt pseudo-label``: the teacher's region-text pseudo labels for pretrain scenes (RegionCLIP)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from regionprompt.data.files import atomic_write_text
from regionprompt.errors import CheckpointError, RegionPromptError
from regionprompt.sharding import parse_shard, shard_from_torchrun


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pseudo-label",
        help="label proposals of pretrain scenes with the teacher's best concept (RegionCLIP)",
        description="For each scene of a scene cache: proposals (trained RPN, or --oracle-proposals) -> the "
        "teacher's region embeddings (RoIAlign 14x14 on res4 -> res5 -> attention pool) -> cosine against the "
        "concept pool -> softmax at --temperature; regions whose best probability reaches --threshold are kept "
        "with their top-k concepts. Output: OUT/meta.json, OUT/pool.json, OUT/shards/*.safetensors and "
        "OUT/manifest.jsonl (format in regionprompt.regionclip.label_store). Rerun the same command to resume; "
        "other settings on an existing OUT are refused. Prints throughput and, with EmojiWorld's true boxes, "
        "pseudo-label precision and recall (also written to OUT/precision.json).",
    )
    parser.add_argument("--teacher", type=Path, required=True, help="teacher model folder (or checkpoint file)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--rpn", type=Path, help="trained proposal network folder (regionprompt train rpn)")
    source.add_argument("--oracle-proposals", action="store_true",
                        help="use the cache's true boxes + jittered and random boxes instead of an RPN (upper bound)")
    parser.add_argument("--cache", type=Path, required=True, help="scene cache folder (pretrain split)")
    parser.add_argument("--pool", required=True,
                        help="concept pool JSON (regionprompt concepts extract), or 'emojiworld' for the world's names")
    parser.add_argument("--out", type=Path, required=True, help="pseudo-label folder to create or resume")
    parser.add_argument("--threshold", type=float, default=0.1, help="keep regions with best probability >= this (default 0.1)")
    parser.add_argument("--temperature", type=float, default=0.01, help="softmax temperature (default 0.01)")
    parser.add_argument("--top-k", type=int, default=5, help="teacher scores stored per region (default 5)")
    parser.add_argument("--max-proposals", type=int, default=100, help="proposals scored per image (default 100)")
    parser.add_argument("--templates", default="emoji", help="prompt templates of the pool embeddings (default emoji)")
    parser.add_argument("--input-size", type=int, default=None, help="image side the teacher sees (default: the cache's)")
    parser.add_argument("--proposal-size", type=int, default=None,
                        help="image side the RPN sees (default: the cache's); boxes are scaled back")
    parser.add_argument("--vocabulary", choices=("pool", "caption"), default="pool",
                        help="pool: every region against the whole pool (the paper); caption: each image's candidates are "
                        "the pool concepts its captions mention, and each labels its most probable proposal(s) (default pool)")
    parser.add_argument("--regions-per-concept", type=int, default=1,
                        help="with --vocabulary caption: proposals labelled per mentioned concept (default 1)")
    parser.add_argument("--shard-images", type=int, default=256, help="images per shard (default 256)")
    parser.add_argument("--max-images", type=int, default=None, help="label only the first N images (rerun with more to continue)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu", help="where the teacher and the proposal network run: cpu (default), "
                        "cuda or cuda:N")
    parser.add_argument("--no-report", action="store_true", help="skip the precision report")
    parser.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                        help="label only the blocks of --shard-images images numbered k with k %% N == I, into OUT/parts, "
                        "for N independent jobs; then run once without --shard to merge them. Under torchrun the ranks "
                        "shard themselves (one GPU each with --device cuda) and rank 0 merges")
    parser.set_defaults(func=run)


def directory_hash(path: Path) -> str:
    """sha256 over the names and contents of the regular files in ``path`` (a model folder's identity)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()


def _load_rpn(path: Path):
    if not path.exists():
        raise CheckpointError(f"{path}: no such proposal network folder")
    try:
        from regionprompt.detect.rpn import ProposalNetwork
    except ImportError as exc:
        raise RegionPromptError(f"the proposal network is not available in this installation ({exc}); "
                                "use --oracle-proposals") from None
    rpn = ProposalNetwork.load(path)
    if hasattr(rpn, "eval"):
        rpn.eval()
    return rpn


def run(args: argparse.Namespace) -> int:
    import torch

    from regionprompt.interop.checkpoints import load_checkpoint
    from regionprompt.regionclip.label_store import PseudoLabels
    from regionprompt.regionclip.oracle import SceneBoxProposals
    from regionprompt.regionclip.precision import precision_report
    from regionprompt.regionclip.pseudo_labels import (
        PseudoLabelConfig,
        load_pool_names,
        pseudo_label,
    )
    from regionprompt.vl.embeddings import EmbeddingCache
    from regionprompt.world.scene_cache import SceneCache

    torch.set_num_threads(args.threads)
    config = PseudoLabelConfig(threshold=args.threshold, temperature=args.temperature, top_k=args.top_k,
                               max_proposals=args.max_proposals, templates=args.templates, input_size=args.input_size,
                               proposal_size=args.proposal_size, shard_images=args.shard_images,
                               vocabulary=args.vocabulary, regions_per_concept=args.regions_per_concept)
    cache = SceneCache(args.cache)
    names, pool_source = load_pool_names(args.pool)
    teacher = load_checkpoint(args.teacher)
    if args.oracle_proposals:
        if args.proposal_size not in (None, cache.spec.size):
            raise RegionPromptError("--oracle-proposals works at the cache's own size; drop --proposal-size")
        source = SceneBoxProposals(cache, num_images=args.max_images)
        proposal_id = source.identity
    else:
        source = _load_rpn(args.rpn)
        proposal_id = f"rpn:{directory_hash(args.rpn)}"
    def label(shard=None, device=args.device):
        return pseudo_label(teacher, source, cache, names, args.out, config, proposal_id=proposal_id,
                            pool_source=pool_source, max_images=args.max_images,
                            embedding_cache=EmbeddingCache(args.out / "embeddings.sqlite"), device=device, shard=shard)

    ranks = shard_from_torchrun() if args.shard is None else None
    if ranks is not None:  # torchrun: every rank labels its shard, then rank 0 merges
        from regionprompt.train.distributed import barrier, distributed_session, rank_device

        with distributed_session(args.device):
            label(ranks, rank_device(args.device))
            barrier()
        if ranks.index:
            return 0
    if args.shard is not None:
        run_ = label(args.shard)
        print(f"shard {args.shard}: labelled {run_.images} images, {run_.regions} regions kept of {run_.proposals} "
              f"in {run_.seconds:.1f} s; run without --shard once every shard is done to merge them")
        return 0
    run_ = label()
    if run_.images:
        print(f"labelled images {run_.first_image}..{run_.stop_image - 1}: {run_.proposals} regions scored, "
              f"{run_.regions} kept ({run_.regions / max(run_.proposals, 1):.1%}) in {run_.seconds:.1f} s "
              f"= {run_.regions_per_second:.1f} regions/s ({run_.images / max(run_.seconds, 1e-9):.2f} images/s)")
    else:
        print(f"nothing to do: {args.out} already covers {run_.total_images} images")
    labels = PseudoLabels.open(args.out)
    print(f"{args.out}: {len(labels)} images, {labels.num_regions} pseudo-labelled regions, pool of {len(labels.pool_names)}")
    if not args.no_report and len(labels):
        report = precision_report(labels, cache)
        atomic_write_text(args.out / "precision.json", json.dumps(report.to_dict(), indent=1) + "\n")
        print(report.markdown(), end="")
    return 0
