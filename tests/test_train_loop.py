"""The shared training loop: resume is exact, interruption keeps a checkpoint, settings are checked."""

import pytest
import torch

from regionprompt.errors import CheckpointError
from regionprompt.train.loop import CHECKPOINT_FILE, LOG_FILE, run_loop


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    y = x.sum(dim=1, keepdim=True)

    def step_fn(step):
        idx = torch.randperm(64, generator=torch.Generator().manual_seed(step))[:16]
        loss = torch.nn.functional.mse_loss(model(x[idx] + 0.01 * torch.randn(16, 4)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss}

    return model, opt, sched, step_fn


def _run(out, total, **kw):
    model, opt, sched, step_fn = _setup()
    result = run_loop(out_dir=out, model=model, optimizer=opt, scheduler=sched, total_steps=total, step_fn=step_fn,
                      checkpoint_every=4, log_every=1, run_info={"lr": 0.05}, **kw)
    return model, result


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    straight, result = _run(tmp_path / "a", 10)
    assert result.finished and result.step == 10
    _, partial = _run(tmp_path / "b", 10, max_steps_this_run=6)
    assert not partial.finished and partial.step == 6
    resumed, result_b = _run(tmp_path / "b", 10)
    assert result_b.resumed_from == 6 and result_b.finished
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    log = (tmp_path / "b" / LOG_FILE).read_text().splitlines()
    assert len(log) == 10  # one line per step, none repeated after the resume


def test_loss_drops(tmp_path):
    _, first = _run(tmp_path / "short", 1)
    _, last = _run(tmp_path / "long", 40)
    assert last.metrics["loss"] < 0.5 * first.metrics["loss"]


def test_interrupt_saves_checkpoint(tmp_path):
    model, opt, sched, step_fn = _setup()

    def interrupted(step):
        if step == 5:
            raise KeyboardInterrupt
        return step_fn(step)

    with pytest.raises(KeyboardInterrupt):
        run_loop(out_dir=tmp_path, model=model, optimizer=opt, scheduler=sched, total_steps=10, step_fn=interrupted,
                 checkpoint_every=100, run_info={"lr": 0.05})
    assert (tmp_path / CHECKPOINT_FILE).exists()
    _, result = _run(tmp_path, 10)
    assert result.resumed_from == 5


def test_resume_with_other_settings_is_refused(tmp_path):
    _run(tmp_path, 10, max_steps_this_run=4)
    model, opt, sched, step_fn = _setup()
    with pytest.raises(CheckpointError, match="different settings"):
        run_loop(out_dir=tmp_path, model=model, optimizer=opt, scheduler=sched, total_steps=10, step_fn=step_fn,
                 run_info={"lr": 0.1})


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        _run(tmp_path, 3)
