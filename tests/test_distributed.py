"""Distributed training (torchrun, gloo on CPU): 2 ranks x B train exactly as one process with 2 x B.

The end-to-end tests launch the documented command (``python -m torch.distributed.run --nproc-per-node 2
-m regionprompt train clip|regions ...``) and compare the run with a single process given the same global
batch: same losses (1e-5) and weights (train clip, ViT-tiny: all within 1e-5). Under AdamW a handful of
elements whose gradient is float noise can drift by up to 2 lr (see docs/distributed.md), so a BatchNorm
network is checked in float64 on a small network in a 2-process group, where the noise is 1e-16.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_train_regions import TINY as REGIONS_TINY
from test_train_regions import _kwargs, setup  # noqa: F401 (the fixture: a scene cache, a teacher, its labels)

from regionprompt.train.clip_pretrain import ClipPretrainConfig, train_clip
from regionprompt.train.distributed import (
    DistContext,
    distributed_session,
    gather_with_grad,
    rank_slice,
    sync_batchnorm,
    wrap_ddp,
)
from regionprompt.train.regions import RegionPretrainConfig, train_regions
from regionprompt.vl.checkpoints import load_checkpoint

SMALL = dict(card="ViT-tiny", text="clip", image_size=32, num_scenes=16, batch_size=8, warmup_steps=2, lr=1e-3,
             concept_min_count=2, concept_weight=0.3, amp=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli_args(config: dict, out: Path, cache: Path) -> list[str]:
    args = ["train", "clip", "--out", str(out), "--cache", str(cache), "--threads", "1", "--workers", "1"]
    for key, value in config.items():
        args += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def _torchrun(args: list[str], *, nproc: int = 2, extra: tuple[str, ...] = (), quiet: bool = True) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "REGIONPROMPT_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
               "127.0.0.1", "--master-port", str(_free_port()), *extra, "-m", "regionprompt", *(["-q"] if quiet else []), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def _losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_checkpoint(a / "model").state_dict(), load_checkpoint(b / "model").state_dict()
    assert wa.keys() == wb.keys()
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("scene_cache")


@pytest.mark.slow
def test_two_ranks_train_as_one_process_with_the_global_batch(tmp_path, cache_dir):
    config = ClipPretrainConfig(steps=4, checkpoint_every=100, **SMALL)
    torch.set_num_threads(1)
    # One process, stopped at step 2 and resumed (the log then holds the losses of steps 2 and 4).
    train_clip(config, tmp_path / "one", cache_dir=cache_dir, workers=1, max_steps_this_run=2)
    train_clip(config, tmp_path / "one", cache_dir=cache_dir, workers=1)
    # Two ranks of 4 images each, stopped at step 2 and restarted: the resume path of distributed runs.
    args = _cli_args({**SMALL, "steps": 4, "checkpoint_every": 100}, tmp_path / "two", cache_dir)
    _finish(_torchrun([*args, "--max-steps-this-run", "2"]))
    assert not (tmp_path / "two" / "model").exists()
    _finish(_torchrun(args))

    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [2, 4]
    for a, b in zip(one, two):
        for key in ("loss", "clip_loss", "concept_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-5), (key, a, b)
    assert _max_weight_difference(tmp_path / "one", tmp_path / "two") < 1e-5
    recipe = json.loads((tmp_path / "two" / "recipe.json").read_text())
    assert recipe["distributed"] == {"world_size": 2, "batch_per_rank": 4, "global_batch": 8, "backend": "gloo"}
    assert "distributed" not in json.loads((tmp_path / "one" / "recipe.json").read_text())


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return sorted(found)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_a_killed_rank_and_a_rerun_end_as_an_uninterrupted_run(tmp_path, cache_dir):
    steps = 16
    config = ClipPretrainConfig(steps=steps, checkpoint_every=2, **SMALL)
    torch.set_num_threads(1)
    train_clip(config, tmp_path / "one", cache_dir=cache_dir, workers=1)
    # One rank is killed: torchrun stops the job; the same command, rerun, resumes from rank 0's last checkpoint.
    args = _cli_args({**SMALL, "steps": steps, "checkpoint_every": 2}, tmp_path / "two", cache_dir)
    process = _torchrun(args)
    checkpoint = tmp_path / "two" / "checkpoint.pt"
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(process.pid)
    assert len(workers) == 2 and not (tmp_path / "two" / "model").exists(), "the run ended before it could be killed"
    os.kill(workers[-1], signal.SIGKILL)
    process.communicate(timeout=240)
    assert process.returncode != 0 and not (tmp_path / "two" / "model").exists()
    output = _finish(_torchrun(args, quiet=False))
    assert "resuming train clip" in output, output  # every rank reads rank 0's checkpoint
    assert _max_weight_difference(tmp_path / "one", tmp_path / "two") < 1e-5
    assert _losses(tmp_path / "two")[-1]["loss"] == pytest.approx(_losses(tmp_path / "one")[-1]["loss"], abs=1e-5)


# ---- the pieces, in a 2-process gloo group (float64: exact up to summation order) ---------------------


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 6),
    ).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 9, 9, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)


def _train(images: torch.Tensor, texts: torch.Tensor, steps: int = 3) -> torch.nn.Module:
    """A contrastive toy: image features vs fixed text vectors, 3 AdamW steps on the batch rows of this rank."""
    net = sync_batchnorm(_net())
    model = wrap_ddp(net, torch.device("cpu"))
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.05)
    part = rank_slice(len(images))
    for _ in range(steps):
        feats = gather_with_grad(torch.nn.functional.normalize(model(images[part]), dim=-1))
        logits = 10 * feats @ torch.nn.functional.normalize(texts, dim=-1).t()
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(texts)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed_session("cpu") as ctx:
        assert ctx == DistContext(rank, 2, rank, "gloo")
        net = _train(*_data())
        if ctx.is_main:
            torch.save(net.state_dict(), out)


def test_global_batchnorm_and_gathered_negatives_match_one_process_in_float64(tmp_path):
    one = _train(*_data()).state_dict()
    mp.start_processes(_rank, args=(_free_port(), str(tmp_path / "two.pt")), nprocs=2, start_method="spawn")
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert one.keys() == two.keys()
    for key in one:  # running statistics included: the BatchNorm saw the global batch
        assert (one[key].double() - two[key].double()).abs().max() < 1e-10, key


def test_rank_slices_cover_the_global_batch_once():
    rows = [list(range(12))[rank_slice(12, DistContext(rank, 3))] for rank in range(3)]
    assert rows == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    with pytest.raises(Exception, match="multiple of the number of processes"):
        rank_slice(10, DistContext(0, 4))



@pytest.mark.slow
def test_train_regions_on_two_ranks_equals_one_process(setup, tmp_path):  # noqa: F811
    config = dict(REGIONS_TINY, steps=3, lr=1e-4)
    train_regions(RegionPretrainConfig(**config), tmp_path / "one", **_kwargs(setup))
    args = ["train", "regions", "--teacher", str(setup / "teacher"), "--labels", str(setup / "labels"), "--cache",
            str(setup / "cache"), "--out", str(tmp_path / "two"), "--threads", "1"]
    for key, value in config.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    _finish(_torchrun(args))
    one, two = _losses(tmp_path / "one")[-1], _losses(tmp_path / "two")[-1]
    for key in ("loss", "distill", "contrastive", "image_text", "grad_norm"):
        assert two[key] == pytest.approx(one[key], abs=1e-5, rel=1e-5), (key, one, two)
    # AdamW moves an element by about lr per step whatever its gradient's size, so the few elements whose
    # gradient is at the level of float summation noise (~1e-7 of the norm: 17 of 2.2 M here) may move
    # apart by up to 2 lr; a wrong gradient would move a large share of them apart.
    wa, wb = (load_checkpoint(tmp_path / run / "model").state_dict() for run in ("one", "two"))
    diffs = torch.cat([(wa[k].float() - wb[k].float()).abs().flatten() for k in wa])
    assert (diffs > 1e-5).float().mean() < 1e-4 and diffs.max() < 2 * config["lr"], diffs.max()
    assert json.loads((tmp_path / "two" / "recipe.json").read_text())["distributed"]["batch_per_rank"] == 2
