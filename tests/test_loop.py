from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from dip_lightning.data import SingleImageDataModule
from dip_lightning.metrics.psnr import psnr
from dip_lightning.networks import SkipNet
from dip_lightning.tasks import DenoisingDIP, DIPModule

SmallNet = partial(SkipNet, channels_down=8, channels_up=8, channels_skip=2, levels=3)


def make_trainer(tmp_path: Path, steps: int, **kwargs: Any) -> Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return Trainer(
        max_steps=steps,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
        **kwargs,
    )


def fit(tmp_path: Path, module: DIPModule, data: SingleImageDataModule, steps: int, **kw: Any):
    trainer = make_trainer(tmp_path, steps, **kw)
    trainer.fit(module, datamodule=data)
    return trainer


class Recorder(Callback):
    """Keeps a copy of per-step values."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.outputs: list[torch.Tensor] = []
        self.restored: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.outputs.append(pl_module.last_output.clone())
        self.restored.append(pl_module.restored_batch().clone())


def test_a_short_fit_lowers_the_loss_on_a_32x32_image(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=8, lr=0.01)
    recorder = Recorder()
    fit(tmp_path, module, data, 30, callbacks=[recorder])
    assert len(recorder.losses) == 30
    first, last = sum(recorder.losses[:3]) / 3, sum(recorder.losses[-3:]) / 3
    assert last < 0.7 * first  # 0.36 to 0.54 of the first losses over model seeds 0-3
    restored = module.restored()
    assert restored.shape == (3, 37, 45)
    assert torch.isfinite(restored).all()


def test_z_is_a_seeded_uniform_buffer(rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png))
    a, b = DenoisingDIP(net=SmallNet, input_depth=4), DenoisingDIP(net=SmallNet, input_depth=4)
    a.attach(data)
    b.attach(data)
    assert "z" in dict(a.named_buffers())
    assert a.z.shape == (1, 4, 40, 48)  # 37x45 padded to multiples of 2**3
    assert torch.equal(a.z, b.z)
    assert float(a.z.min()) >= 0 and float(a.z.max()) < 0.1
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=False))


def test_output_ema_follows_the_papers_recurrence(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=4, ema_decay=0.9)
    recorder = Recorder()
    fit(tmp_path, module, data, 6, callbacks=[recorder])
    expected = recorder.outputs[0]
    for output in recorder.outputs[1:]:
        expected = 0.9 * expected + 0.1 * output
    torch.testing.assert_close(module.output_ema, expected, rtol=1e-5, atol=1e-6)


def test_peak_psnr_is_tracked_at_every_step(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=4)
    recorder = Recorder()
    fit(tmp_path, module, data, 12, callbacks=[recorder])
    clean = module.clean
    values = [float(psnr(r, clean)) for r in recorder.restored]
    best = max(range(len(values)), key=values.__getitem__)
    assert float(module.peak_psnr) == pytest.approx(values[best], abs=1e-4)
    assert int(module.peak_step) == best + 1


class Sabotage(Callback):
    """Wreck the parameters before a given step (by scaling or with a NaN)."""

    def __init__(self, step: int, nan: bool) -> None:
        self.step, self.nan = step, nan
        self.before: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        params = list(pl_module.net.parameters())
        self.before = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                if self.nan:
                    p.fill_(float("nan"))
                else:
                    p.mul_(-25.0).add_(3.0)


@pytest.mark.parametrize("nan", [False, True])
def test_divergence_guard_restores_the_last_good_parameters(
    tmp_path: Path, rgb_png: Path, nan: bool
) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=4)
    sabotage, recorder = Sabotage(step=8, nan=nan), Recorder()
    fit(tmp_path, module, data, 12, callbacks=[sabotage, recorder])
    assert int(module.recoveries) >= 1
    assert torch.isfinite(module.restored()).all()
    assert all(math.isfinite(loss) for loss in recorder.losses[9:])
    # the EMA ignored the wrecked output
    assert torch.isfinite(module.output_ema).all()
    assert float(psnr(module.output_ema, module.clean)) > 10


def test_without_guard_a_nan_poisons_the_network_but_not_the_output(
    tmp_path: Path, rgb_png: Path
) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=4, guard_drop_db=None)
    fit(tmp_path, module, data, 10, callbacks=[Sabotage(step=5, nan=True)])
    assert not all(torch.isfinite(p).all() for p in module.net.parameters())
    assert int(module.recoveries) == 0
    assert torch.isfinite(module.restored()).all()  # the last finite output is kept


def test_fits_are_deterministic_under_a_seed(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    outputs = []
    for seed in (0, 0, 1):
        module = DenoisingDIP(net=SmallNet, input_depth=4, seed=seed)
        fit(tmp_path, module, data, 5)
        outputs.append(module.restored())
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def test_resumed_fit_equals_an_uninterrupted_one(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    whole = DenoisingDIP(net=SmallNet, input_depth=4)
    fit(tmp_path / "whole", whole, data, 16)

    first = DenoisingDIP(net=SmallNet, input_depth=4)
    trainer = fit(tmp_path / "first", first, data, 8)
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    second = DenoisingDIP(net=SmallNet, input_depth=4)
    trainer = make_trainer(tmp_path / "second", 16)
    trainer.fit(second, datamodule=data, ckpt_path=ckpt)
    assert trainer.global_step == 16
    assert torch.equal(whole.restored(), second.restored())
    assert torch.equal(whole.peak_psnr, second.peak_psnr)


def test_a_module_needs_the_single_image_datamodule(tmp_path: Path) -> None:
    from dip_lightning.errors import ConfigError

    class Other(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int) -> int:
            return 0

    module: LightningModule = DenoisingDIP(net=SmallNet, input_depth=4)
    with pytest.raises(ConfigError, match="SingleImageDataModule"):
        make_trainer(tmp_path, 1).fit(module, torch.utils.data.DataLoader(Other()))


def assert_same_fit(a: DIPModule, b: DIPModule, atol: float = 1e-10) -> None:
    """The last output and every parameter of two float64 fits agree.

    The last output, not the average: after a few steps the average is mostly the first step's
    output, which is the same by construction. In float64 rounding differences (another
    summation order, another kernel) stay near 1e-14 in the output and below 1e-9 in the
    parameters that batch norm makes irrelevant; changing the learning rate by one part in a
    million moves both by about 1e-6 (see test_the_fit_comparison_sees_a_small_change)."""
    assert a.last_output.dtype == b.last_output.dtype == torch.float64
    torch.testing.assert_close(a.last_output, b.last_output, atol=atol, rtol=0)
    pairs = zip(a.net.named_parameters(), b.net.named_parameters(), strict=True)
    for (name, p), (other, q) in pairs:
        assert name == other
        torch.testing.assert_close(p, q, atol=1e-8, rtol=0, msg=name)


def fit64(tmp_path: Path, data: SingleImageDataModule, steps: int = 8, **kwargs: Any) -> DIPModule:
    module = DenoisingDIP(net=SmallNet, input_depth=4, **kwargs)
    fit(tmp_path, module, data, steps, precision="64-true")
    return module


def test_the_fit_comparison_sees_a_small_change(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    plain = fit64(tmp_path, data)
    assert_same_fit(plain, fit64(tmp_path, data))
    nudged = fit64(tmp_path, data, lr=0.01 * (1 + 1e-6))
    # the averages differ 100 times less than the last outputs (they are mostly the first
    # step's output, the same in both), so a comparison of averages would miss such a change
    ema = float((plain.output_ema - nudged.output_ema).abs().max())
    last = float((plain.last_output - nudged.last_output).abs().max())
    assert ema < last / 20
    with pytest.raises(AssertionError):
        assert_same_fit(plain, nudged)
    with pytest.raises(AssertionError):
        assert_same_fit(plain, fit64(tmp_path, data, steps=7))


def test_channels_last_gives_the_same_fit(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    # the same perturbation is drawn in either layout, so the trajectories match
    for perturbation in ("fresh", "bank"):
        plain = fit64(tmp_path, data, perturbation=perturbation)
        fast = fit64(tmp_path, data, perturbation=perturbation, channels_last=True)
        assert fast.z.is_contiguous(memory_format=torch.channels_last)
        conv = next(p for p in fast.net.parameters() if p.dim() == 4 and p.shape[-1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last)
        assert_same_fit(plain, fast)


def test_compile_runs_the_network_through_torch_compile(
    tmp_path: Path, rgb_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[Any] = []
    runs: list[int] = []
    real_compile = torch.compile

    def counting(graph: torch.fx.GraphModule, example_inputs: Any) -> Any:
        def run(*args: Any) -> Any:  # dynamo's traced graph, run eagerly (no codegen)
            runs.append(1)
            return graph.forward(*args)

        return run

    def compile_eagerly(module: Any, **kwargs: Any) -> Any:
        compiled.append(module)
        return real_compile(module, backend=counting, **kwargs)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    plain = fit64(tmp_path / "a", data)
    fast = DenoisingDIP(net=SmallNet, input_depth=4, compile=True)
    trainer = fit(tmp_path / "b", fast, data, 8, precision="64-true")
    assert compiled == [fast.net]
    assert len(runs) >= 8  # every step ran the traced graph
    assert_same_fit(plain, fast)
    # the checkpoint holds the network's own parameters: it loads without compiling
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    state = torch.load(tmp_path / "c.ckpt", weights_only=False)["state_dict"]
    assert not any("_orig_mod" in key or "_compiled" in key for key in state)
    assert set(state) == set(plain.state_dict())


def test_adam_at_its_defaults_runs_fused(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=4)
    module.attach(data)
    assert module.configure_optimizers().defaults["fused"] is True
    for chosen in (
        partial(torch.optim.Adam, foreach=True),
        partial(torch.optim.Adam, fused=False),
        torch.optim.SGD,
    ):
        other = DenoisingDIP(net=SmallNet, input_depth=4, optimizer=chosen)
        other.attach(data)
        assert not other.configure_optimizers().defaults.get("fused")
    # the fused update is the same update
    fused = DenoisingDIP(net=SmallNet, input_depth=4)
    trainer = fit(tmp_path / "fused", fused, data, 8, precision="64-true")
    assert trainer.optimizers[0].defaults["fused"] is True
    plain = fit64(tmp_path / "plain", data, optimizer=partial(torch.optim.Adam, fused=False))
    assert_same_fit(fused, plain)


def test_noise_bank_is_normal_and_resumes_exactly(tmp_path: Path, rgb_png: Path) -> None:
    data = SingleImageDataModule(image=str(rgb_png), noise_sigma=25)
    module = DenoisingDIP(net=SmallNet, input_depth=4, perturbation="bank", sigma_p=1.0)
    module.attach(data)
    module.on_fit_start()
    draws = torch.stack([module.perturbed_input() - module.z for _ in range(50)])
    assert abs(float(draws.mean())) < 0.05 and abs(float(draws.std()) - 1) < 0.05
    assert not torch.equal(draws[0], draws[1])

    whole = DenoisingDIP(net=SmallNet, input_depth=4, perturbation="bank")
    fit(tmp_path / "whole", whole, data, 12)
    first = DenoisingDIP(net=SmallNet, input_depth=4, perturbation="bank")
    trainer = fit(tmp_path / "first", first, data, 6)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    second = DenoisingDIP(net=SmallNet, input_depth=4, perturbation="bank")
    make_trainer(tmp_path / "second", 12).fit(
        second, datamodule=data, ckpt_path=tmp_path / "half.ckpt"
    )
    assert torch.equal(whole.restored(), second.restored())
