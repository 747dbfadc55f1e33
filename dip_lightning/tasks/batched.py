"""``BatchedDIP``: several fits of one config (several images, or seeds of one) run at once.

Each image keeps its own :class:`~dip_lightning.tasks.DIPModule` (a *member*: its observation,
``z``, perturbation generator, output average, peak and guard state), but the ``K`` networks run
as one grouped module (:func:`~dip_lightning.networks.group_networks`): one forward, one
backward and one optimizer step per step for all of them. Every parameter of the grouped module
is the ``K`` networks' parameters concatenated, and the loss is the sum of the members' losses,
so each network gets the gradient of its own loss, its own batch-normalisation statistics and,
with an element-wise optimizer such as Adam, its own optimizer state: in float64 a batched fit
gives the images of the separate fits to about ``1e-10``.

Per image, as in a separate fit:

* the divergence guard rolls back that network's block of every parameter and of its
  element-wise optimizer state only (Adam's moments; its step count, one per parameter tensor
  for all the networks, counts every step in a separate fit too);
* the stopping criteria in ``trainer.callbacks`` are copied for each member, and an image whose
  criterion stops is *halted*: its network is rolled back every step and its output kept,
  while the others go on; the fit ends when every image has stopped (or at ``max_steps``);
* ``restored.png`` and ``metrics.json`` are written into a folder of the run directory named
  after the image (``<run dir>/<name>/``), and the run directory's ``metrics.json`` lists them;
* scalars are logged under ``<name>/`` (``<name>/psnr``, ``<name>/train/loss``, ...).

Two things differ from separate fits: the learning rate is shared, so where the divergence
policy of a separate fit would lower it, the batched fit halts that image instead (with a
warning naming it); and image and FBC logging to TensorBoard are off.

Built by ``dip fit --batch.images [a.png,b.png] --batch.seeds N`` and
``dip restore a.png b.png --batch-size K``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dip_lightning.callbacks.artifacts import RunArtifacts, run_directory, save_last_checkpoint
from dip_lightning.callbacks.fbc import FBCLogger
from dip_lightning.callbacks.images import ImageLogger
from dip_lightning.callbacks.stopping import StoppingCriterion
from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.errors import ConfigError
from dip_lightning.io_utils import atomic_write_json
from dip_lightning.networks.grouped import GroupedNetwork, group_networks, split_output
from dip_lightning.tasks.base import DIPModule, FitLoop
from dip_lightning.tasks.guard import LastGoodState, keep_state_before_step, roll_back
from dip_lightning.tasks.host_reads import log_host_values, read_on_host

__all__ = ["BatchedDIP", "MemberTrainer", "batch_names"]

log = logging.getLogger(__name__)


def batch_names(images: Sequence[str | None], seeds: int) -> list[str]:
    """The folder name of each fit of ``images`` x ``range(seeds)``: the image's file stem
    (``cat`` for the embedded sample), with ``_seed<s>`` for ``seeds > 1`` and a number where
    two stems are equal.

    >>> batch_names(["a/x.png", "b/x.jpg", "y.png"], 1)
    ['x_1', 'x_2', 'y']
    >>> batch_names([None], 2)
    ['cat_seed0', 'cat_seed1']
    """
    stems = [Path(image).stem if image else "cat" for image in images]
    unique = []
    for index, stem in enumerate(stems):
        repeated = stems.count(stem) > 1
        unique.append(f"{stem}_{stems[: index + 1].count(stem)}" if repeated else stem)
    if seeds == 1:
        return unique
    return [f"{stem}_seed{seed}" for stem in unique for seed in range(seeds)]


class MemberTrainer:
    """The trainer as one image's callbacks see it: its own callbacks, run directory (a folder
    of the batched run's) and ``should_stop``; no loggers; everything else is the trainer's."""

    def __init__(self, trainer: Trainer, name: str, callbacks: list[Callback]) -> None:
        self._trainer = trainer
        self.name = name
        self.callbacks = callbacks
        self.should_stop = False
        self.loggers: list[Any] = []
        self.logger = None

    @property
    def log_dir(self) -> str:
        return str(run_directory(self._trainer) / self.name)

    @property
    def default_root_dir(self) -> str:
        return self.log_dir

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)


class BatchedCallbacks(Callback):
    """Runs each image's callbacks (a :class:`RunArtifacts` and copies of the trainer's stopping
    criteria) with its :class:`MemberTrainer`, halts an image whose criterion stops, saves their
    state in the checkpoint and writes the run directory's ``metrics.json``."""

    def __init__(self, criteria: list[StoppingCriterion]) -> None:
        self.criteria = criteria
        self.trainers: list[MemberTrainer] = []
        self._loaded: list[dict[str, Any]] | None = None
        self._start = 0.0

    def _build(self, trainer: Trainer, module: BatchedDIP) -> None:
        if self.trainers:
            return
        for name in module.names:
            callbacks: list[Callback] = [RunArtifacts()]
            callbacks += [copy.deepcopy(criterion) for criterion in self.criteria]
            self.trainers.append(MemberTrainer(trainer, name, callbacks))
        self._load_members()

    def _each(
        self, hook: str, pl_module: LightningModule, *args: Any, reverse: bool = False
    ) -> None:
        module: BatchedDIP = pl_module  # type: ignore[assignment]
        pairs = list(zip(self.trainers, module.dip_members(), strict=True))
        for member_trainer, member in reversed(pairs) if reverse else pairs:
            for callback in member_trainer.callbacks:
                getattr(callback, hook)(member_trainer, member, *args)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._build(trainer, pl_module)  # type: ignore[arg-type]
        self._each("setup", pl_module, stage)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()
        self._each("on_fit_start", pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._each("on_train_start", pl_module)
        module: BatchedDIP = pl_module  # type: ignore[assignment]
        for member_trainer, member in zip(self.trainers, module.dip_members(), strict=True):
            stopped = any(
                isinstance(c, StoppingCriterion) and c.stop and c.would_stop_step is not None
                for c in member_trainer.callbacks
            )
            member.halted = member.halted or stopped
        if all(member.halted for member in module.dip_members()):
            trainer.should_stop = True  # resumed after every image had stopped

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Any
    ) -> None:
        self._each("on_before_optimizer_step", pl_module, optimizer)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._each("on_train_batch_end", pl_module, outputs, batch, idx)
        module: BatchedDIP = pl_module  # type: ignore[assignment]
        for member_trainer, member in zip(self.trainers, module.dip_members(), strict=True):
            if member_trainer.should_stop and not member.halted:
                member.halted = True
                log.info("%s: stopped at step %d", member_trainer.name, trainer.global_step)
        if all(member.halted for member in module.dip_members()):
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._each("on_train_end", pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == 0 or trainer.sanity_checking:
            return
        self._each("on_fit_end", pl_module)
        self.write_summary(trainer, pl_module)  # type: ignore[arg-type]

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._each("teardown", pl_module, stage, reverse=True)  # signal handlers unwind

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """On Ctrl-C or SIGTERM: one checkpoint of the batched fit, and each image so far."""
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        module: BatchedDIP = pl_module  # type: ignore[assignment]
        if trainer.global_step == 0 or not self.trainers:
            return
        checkpoint = save_last_checkpoint(trainer)
        for member_trainer, member in zip(self.trainers, module.dip_members(), strict=True):
            artifacts = member_trainer.callbacks[0]
            assert isinstance(artifacts, RunArtifacts)
            artifacts.write(member_trainer, member, interrupted=True)  # type: ignore[arg-type]
        log.warning(
            "interrupted at step %d: wrote each image so far into %s; continue with --ckpt_path %s",
            trainer.global_step,
            run_directory(trainer),
            checkpoint,
        )

    def write_summary(self, trainer: Trainer, module: BatchedDIP) -> None:
        """The run directory's ``metrics.json``: the batch and each image's metrics."""
        writers = [(t.name, t.callbacks[0]) for t in self.trainers]
        images = {
            name: artifacts.written
            for name, artifacts in writers
            if isinstance(artifacts, RunArtifacts) and artifacts.written is not None
        }
        first = writers[0][1] if writers else None
        per_step = first.seconds_per_step() if isinstance(first, RunArtifacts) else None
        summary = {
            "batch": len(module.members),
            "steps": int(trainer.global_step),
            "seconds": round(time.perf_counter() - self._start, 3),
            "seconds_per_step": per_step,
            "images": images,
        }
        atomic_write_json(run_directory(trainer) / "metrics.json", summary)

    def state_dict(self) -> dict[str, Any]:
        return {
            "members": [
                {c.state_key: c.state_dict() for c in member.callbacks} for member in self.trainers
            ]
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict.get("members")
        if self.trainers:  # already built: hand the states on now
            self._load_members()

    def _load_members(self) -> None:
        if self._loaded is None:
            return
        for member, states in zip(self.trainers, self._loaded, strict=True):
            for callback in member.callbacks:
                if callback.state_key in states:
                    callback.load_state_dict(states[callback.state_key])
        self._loaded = None


class BatchedDIP(FitLoop):
    """Fit ``members`` (DIP modules of one config), each to its ``datas`` image, at once.

    Args:
        members: one task module per fit, built from the same config (seeds may differ).
        datas: the data module of each member.
        names: each member's name: its logging prefix and the folder of its outputs.
    """

    def __init__(
        self,
        members: Sequence[DIPModule],
        datas: Sequence[SingleImageDataModule],
        names: Sequence[str],
    ) -> None:
        super().__init__()
        if not members or not len(members) == len(datas) == len(names):
            raise ValueError("give one data module and one name per member")
        if len(set(names)) != len(names):
            raise ValueError(f"the members' names must differ, got {list(names)}")
        self.members = torch.nn.ModuleList(members)
        self.datas = list(datas)
        self.names = list(names)
        self.grouped: GroupedNetwork | None = None
        self._last_good = LastGoodState()
        self._before_step = LastGoodState()  # the state a step starts from
        self._loaded_good: dict[str, Any] | None = None  # the last good state of a checkpoint
        self._host_reads: list[tuple[list[torch.Tensor], Any]] = []
        self._compiled: list[torch.nn.Module] = []

    @property
    def first(self) -> DIPModule:
        member = self.members[0]
        assert isinstance(member, DIPModule)
        return member

    def dip_members(self) -> list[DIPModule]:
        return [m for m in self.members if isinstance(m, DIPModule)]

    # ------------------------------------------------------------------ building

    def attach(self) -> None:
        """Attach every member to its data and merge their networks into one grouped module."""
        if self.grouped is not None:
            return
        members = self.dip_members()
        if members[0].loss_name == "sure":
            raise ConfigError(
                "a batched fit cannot use model.loss sure (its divergence runs each network "
                "again on its own); fit the images one at a time"
            )
        for member, data, name in zip(members, self.datas, self.names, strict=True):
            member.attach(data)
            member._log_to = (self, name)
        first = members[0]
        for member, name in zip(members[1:], self.names[1:], strict=True):
            if member.z.shape != first.z.shape or member.crop_box != first.crop_box:
                assert first.crop_box is not None and member.crop_box is not None
                raise ConfigError(
                    f"a batched fit needs images of one size and mode: {self.names[0]} gives "
                    f"{first.crop_box.width}x{first.crop_box.height} with "
                    f"{first.observation.shape[1]} channels, {name} "
                    f"{member.crop_box.width}x{member.crop_box.height} with "
                    f"{member.observation.shape[1]} channels; fit them in separate batches"
                )
        nets = [member.net for member in members]
        try:
            self.grouped = group_networks([net for net in nets if net is not None])
        except ValueError as exc:
            raise ConfigError(f"this network cannot be batched: {exc}; fit one at a time") from None
        for member in members:
            member._parameters_count = member.parameters_count
            member.net = None

    def setup(self, stage: str) -> None:
        self.attach()
        for member in self.dip_members():
            member.trainer = self.trainer

    @property
    def z(self) -> torch.Tensor:
        """The grouped network's input: the members' ``z`` stacked along channels."""
        return torch.cat([member.z for member in self.dip_members()], 1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        assert self.grouped is not None
        return self.first.build_optimizer(self.grouped)

    def configure_callbacks(self) -> list[Callback]:
        # the trainer's stopping criteria act per image: each member gets its own copies
        callbacks = self.trainer.callbacks  # type: ignore[attr-defined]
        criteria = [c for c in callbacks if isinstance(c, StoppingCriterion)]
        dropped = [c for c in callbacks if isinstance(c, (FBCLogger, ImageLogger))]
        for callback in criteria + dropped:
            callbacks.remove(callback)
        if dropped:
            log.warning(
                "a batched fit logs no images or FBC bands; %s not used",
                ", ".join(type(c).__name__ for c in dropped),
            )
        return [BatchedCallbacks(criteria)]

    # ------------------------------------------------------------------ the loop

    def on_fit_start(self) -> None:
        for member in self.dip_members():
            member.on_fit_start()
        first = self.first
        assert self.grouped is not None
        if first.channels_last:
            self.grouped.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if first.compile_net and not self._compiled:
            self._compiled.append(torch.compile(self.grouped))  # type: ignore[arg-type]

    def on_train_start(self) -> None:
        self._last_good.reset()  # the state the fit starts from (initial or loaded)
        loaded, self._loaded_good = self._loaded_good, None
        if loaded is not None:
            self._last_good.load(loaded, self.z.device)
        elif self.grouped is not None and self.trainer.optimizers:
            params = [p for p in self.grouped.parameters() if p.requires_grad]
            self._last_good.save(params, self.trainer.optimizers[0])
        self._host_reads = []
        for member in self.dip_members():
            member._host_reads = []

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Each member's output (cropped, in its buffers' precision) for the stacked ``z``."""
        assert self.grouped is not None
        y = self._compiled[0](z) if self._compiled else self.grouped(z)
        outputs = []
        members = self.dip_members()
        for member, out in zip(members, split_output(y, len(members)), strict=True):
            box = member.crop_box
            assert box is not None
            crop = out[..., box.top : box.bottom, box.left : box.right]
            outputs.append(crop.to(member.last_output.dtype))
        return outputs

    def perturbed_input(self) -> torch.Tensor:
        """The members' perturbed inputs stacked along channels."""
        z = torch.cat([member.perturbed_input() for member in self.dip_members()], 1)
        if self.first.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        return z

    def fit_step(self, x: list[torch.Tensor], step: int) -> torch.Tensor:
        """The sum of the members' losses (:meth:`DIPModule.fit_step`) for their outputs ``x``."""
        members = self.dip_members()
        loss = torch.stack([m.fit_step(out, step) for m, out in zip(members, x, strict=True)]).sum()
        if self.first.is_log_step(step):
            self._host_reads.append(
                ([loss.detach()], lambda v: self.log_host_values({"train/loss": v[0]}))
            )
        return loss

    def log_host_values(self, values: dict[str, float]) -> None:
        """Log numbers read at a log step (see :meth:`DIPModule.log_host_values`)."""
        log_host_values(self.trainer, values, ("train/loss",))

    def guarded_parameters(self) -> list[torch.Tensor]:
        """The grouped network's trainable parameters: an image's block of them goes back when
        its step diverged or when it has stopped, so they are always kept."""
        assert self.grouped is not None
        return [p for p in self.grouped.parameters() if p.requires_grad]

    def keep_state_before_step(self, params: list[torch.Tensor], optimizer: Any) -> None:
        keep_state_before_step(self._last_good, self._before_step, params, optimizer)

    def roll_back_diverged(self, params: list[torch.Tensor], optimizer: Any, step: int) -> None:
        """The roll-back of the block of each parameter and of its optimizer state that
        belongs to an image whose step diverged (or that has stopped), the others kept; then
        the per-image divergence policy."""
        first = self.first
        members = self.dip_members()
        guarded = first.guard_drop_db is not None or any(m.halted for m in members)
        if all(member._bad is not None for member in members):
            bad = torch.stack([member._bad for member in members])  # type: ignore[misc]

            def rows(tensor: torch.Tensor) -> torch.Tensor:  # each network's block of it
                mask = bad.repeat_interleave(tensor.shape[0] // len(members))
                return mask.view(-1, *([1] * (tensor.dim() - 1)))

            with torch.no_grad():
                # each image's block: its last good state advances where its step was good,
                # and its parameters go back to it where the step diverged
                roll_back(self._last_good, self._before_step, params, optimizer, rows)
                for member in members:
                    assert member._bad is not None
                    if guarded and not member.halted:
                        member.record_guard(member._bad)
        limit = first.max_recoveries
        if guarded and limit is not None and first.is_log_step(step):
            for member, name in zip(members, self.names, strict=True):
                if not member.halted:
                    member.check_divergence(step, self._halter(member, name, limit))

    def flush_host_reads(self) -> None:
        """The one host read of a log step: the members' values and the summed loss."""
        members = self.dip_members()
        reads = [read for member in members for read in member._host_reads] + self._host_reads
        for member in members:
            member._host_reads = []
        self._host_reads = []
        read_on_host(reads)

    def _halter(self, member: DIPModule, name: str, limit: int) -> Any:
        """What to do with ``member``'s longest run of roll-backs, read at a log step: halt it
        after ``limit`` in a row (the learning rate is shared, so it cannot be lowered for
        one image alone)."""

        def act(step: int, worst: int) -> None:
            if worst < limit or member.halted:
                return
            member.halted = True
            member.stopped_on_divergence = True
            log.warning(
                "%s: stopped at step %d: %d steps in a row diverged and were rolled back; "
                "kept the output of the good steps; fit it alone (its learning rate is "
                "then lowered) or with a lower model.lr",
                name,
                step,
                worst,
            )
            if all(m.halted for m in self.dip_members()):
                self.trainer.should_stop = True

        return act

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = []
        for member in self.dip_members():
            state: dict[str, Any] = {}
            member.on_save_checkpoint(state)
            states.append(
                {
                    **state["dip_state"],
                    "halted": member.halted,
                    "stopped_on_divergence": member.stopped_on_divergence,
                }
            )
        checkpoint["dip_batch"] = {"members": states, "last_good": self._last_good.saved()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        batch = checkpoint.get("dip_batch", {})
        self._loaded_good = batch.get("last_good")
        for member, state in zip(self.dip_members(), batch.get("members", []), strict=False):
            member.on_load_checkpoint({"dip_state": state})
            member.halted = bool(state.get("halted", False))
            member.stopped_on_divergence = bool(state.get("stopped_on_divergence", False))
