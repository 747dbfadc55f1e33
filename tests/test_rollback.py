"""The divergence guard's roll-back: after a rolled-back step the parameters and the optimizer's
element-wise state (Adam's moments) are exactly those after the last good step, in a single fit
and per network in a batched one; the step count goes on."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import smooth_image, write_png
from lightning.pytorch import Callback, Trainer
from test_batched_fit import TINY

from dip_lightning.cli import DIPCLI
from dip_lightning.data import SingleImageDataModule
from dip_lightning.networks import SkipNet
from dip_lightning.tasks import DenoisingDIP
from dip_lightning.tasks.batched import BatchedDIP
from dip_lightning.tasks.guard import LastGoodState

SmallNet = partial(SkipNet, channels_down=8, channels_up=8, channels_skip=2, levels=3)
MOMENTS = ("exp_avg", "exp_avg_sq")


def snapshot(params: list[torch.Tensor], optimizer: Any) -> list[dict[str, torch.Tensor]]:
    """Copies of each parameter and of every tensor of its optimizer state."""
    copies = []
    for p in params:
        state = {k: v.clone() for k, v in optimizer.state.get(p, {}).items()}
        copies.append({"param": p.detach().clone(), **state})
    return copies


class Wreck(Callback):
    """Before step ``step + 1``: wreck the parameters (``rows`` of each, or all) with NaN or by
    scaling. Keep the state step ``step`` started from (the last whose output was checked
    good: ``before``) and the state after the wrecked step (``after``)."""

    def __init__(self, step: int, nan: bool, params: Any, rows: slice = slice(None)) -> None:
        self.step, self.nan, self.params, self.rows = step, nan, params, rows
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        with torch.no_grad():
            for p in self.params(pl_module):
                block = p[self.rows]
                block.fill_(float("nan")) if self.nan else block.mul_(-25.0).add_(3.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in (self.step - 1, self.step + 1):
            copies = snapshot(list(self.params(pl_module)), trainer.optimizers[0])
            if trainer.global_step == self.step - 1:
                self.before = copies
            else:
                self.after = copies


def single_params(module: Any) -> list[torch.Tensor]:
    return [p for p in module.net.parameters() if p.requires_grad]


def bare_trainer(root: Path, max_steps: int, *callbacks: Callback) -> Trainer:
    """A trainer with nothing but the fit: no logger, checkpoint, bar or summary."""
    return Trainer(
        max_steps=max_steps,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


@pytest.mark.parametrize(
    ("nan", "optimizer"),
    [
        (True, None),  # Adam at its defaults: fused, its step count a tensor beside the params
        (False, None),
        (True, partial(torch.optim.Adam, foreach=False)),
        (False, partial(torch.optim.AdamW, foreach=True, amsgrad=True)),
    ],
)
def test_a_rolled_back_step_restores_the_parameters_and_the_moments_exactly(
    tmp_path: Path, rgb_png: Path, nan: bool, optimizer: Any
) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    kwargs = {} if optimizer is None else {"optimizer": optimizer}
    module = DenoisingDIP(net=SmallNet, input_depth=4, max_recoveries=None, **kwargs)
    wreck = Wreck(step=6, nan=nan, params=single_params)
    trainer = bare_trainer(tmp_path, 7, wreck)
    trainer.fit(module, datamodule=data)
    assert int(module.recoveries) == 1  # step 7 was rolled back
    fused = trainer.optimizers[0].defaults.get("fused")
    assert fused is (True if optimizer is None else None)
    keys = set(wreck.before[0])
    amsgrad = optimizer is not None and optimizer.keywords.get("amsgrad", False)
    assert {"param", "step", *MOMENTS} <= keys and ("max_exp_avg_sq" in keys) == amsgrad
    beta1, beta2 = trainer.optimizers[0].param_groups[0]["betas"]
    decay = {"param": 1.0, "exp_avg": beta1, "exp_avg_sq": beta2, "max_exp_avg_sq": 1.0}
    for before, after in zip(wreck.before, wreck.after, strict=True):
        assert set(before) == set(after) == keys
        # the parameters of the last good step exactly; Adam's state as a zero-gradient step
        # leaves it
        for key in keys - {"step"}:
            assert torch.equal(after[key], before[key] * decay[key]), key
        assert float(after["step"]) == float(before["step"]) + 2  # the count goes on
    # the fit goes on from there
    assert all(torch.isfinite(p).all() for p in module.net.parameters())


def test_a_first_step_that_diverged_leaves_the_initial_parameters_and_a_fresh_state(
    tmp_path: Path, rgb_png: Path
) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=4, max_recoveries=None)
    module.attach(data)
    initial = [p.detach().clone() for p in single_params(module)]
    wreck = Wreck(step=0, nan=True, params=single_params)
    trainer = bare_trainer(tmp_path, 1, wreck)
    trainer.fit(module, datamodule=data)
    assert int(module.recoveries) == 1
    for p, start in zip(single_params(module), initial, strict=True):
        assert torch.equal(p, start)
        state = trainer.optimizers[0].state[p]
        for key in MOMENTS:
            assert torch.equal(state[key], torch.zeros_like(p))  # a fresh Adam's


def test_the_copy_is_restored_only_where_the_mask_says() -> None:
    generator = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(4, 3, generator=generator))
    optimizer = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.randn(4, 3, generator=generator)
    optimizer.step()
    guard = LastGoodState()
    guard.save([param], optimizer)
    good = param.detach().clone(), optimizer.state[param]["exp_avg"].clone()
    param.grad = torch.randn(4, 3, generator=generator)
    optimizer.step()
    moved = param.detach().clone(), optimizer.state[param]["exp_avg"].clone()
    rows = torch.tensor([True, False, True, False]).view(4, 1)
    guard.restore([param], optimizer, lambda tensor: rows)
    now_all = (param, optimizer.state[param]["exp_avg"])
    beta1 = optimizer.param_groups[0]["betas"][0]
    good = good[0], good[1] * beta1  # the moment as a step with a zero gradient leaves it
    for now, before, after in zip(now_all, good, moved, strict=True):
        assert torch.equal(now[rows[:, 0]], before[rows[:, 0]])
        assert torch.equal(now[~rows[:, 0]], after[~rows[:, 0]])
        assert not torch.equal(before[~rows[:, 0]], after[~rows[:, 0]])


def test_a_batched_fit_rolls_back_one_networks_block_of_parameters_and_moments(
    tmp_path: Path,
) -> None:
    paths = [write_png(tmp_path / f"im{i}.png", smooth_image(19, 25, seed=i)) for i in range(2)]
    args = [
        *TINY,
        f"--batch.images={json.dumps([str(p) for p in paths])}",
        "--trainer.max_steps=6",
        "--model.init_args.lr=0.01",
        "--model.init_args.guard_drop_db=5",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = DIPCLI(args=args, run=False)
    model = cli.model
    assert isinstance(model, BatchedDIP)
    assert model.grouped is not None
    grouped = [p for p in model.grouped.parameters() if p.requires_grad]
    # the first network's block of every parameter: the first half of its rows
    blocks = {id(p): p.shape[0] // 2 for p in grouped}

    class FirstBlock(Wreck):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == self.step:
                with torch.no_grad():
                    for p in grouped:
                        p[: blocks[id(p)]].fill_(float("nan"))

    wreck = FirstBlock(step=4, nan=True, params=lambda module: grouped)
    cli.trainer.callbacks.append(wreck)  # type: ignore[attr-defined]
    cli.trainer.fit(model, cli.datamodule)
    first, second = model.dip_members()
    assert (int(first.recoveries), int(second.recoveries)) == (1, 0)
    beta1, beta2 = cli.trainer.optimizers[0].param_groups[0]["betas"]  # type: ignore[attr-defined]
    decay = {"param": 1.0, "exp_avg": beta1, "exp_avg_sq": beta2}
    for p, before, after in zip(grouped, wreck.before, wreck.after, strict=True):
        n = blocks[id(p)]
        for key in ("param", *MOMENTS):  # rolled back exactly
            assert torch.equal(after[key][:n], before[key][:n] * decay[key]), key
        # the other network took its step
        assert not torch.equal(after["exp_avg"][n:], before["exp_avg"][n:])
    assert not all(
        torch.equal(after["param"][blocks[id(p)] :], before["param"][blocks[id(p)] :])
        for p, before, after in zip(grouped, wreck.before, wreck.after, strict=True)
    )
