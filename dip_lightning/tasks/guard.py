"""The divergence guard and its policy.

The guard checks every step's output: a step whose loss is not finite, or whose PSNR of
``A(x_hat)`` against the observation falls more than ``guard_drop_db`` below that of the last
good step, is rolled back. Its parameters and optimizer state go back to those of the last step
whose output passed (:class:`LastGoodState`), with masks on the device and no host sync.

After a rolled-back step the parameters are exactly those of the last step whose output passed
(the state that step started from), and the optimizer's element-wise state is that step's as a
step with a zero gradient leaves it (Adam's ``exp_avg`` times ``beta1``, ``exp_avg_sq`` times
``beta2``; other state tensors of a parameter's shape as they were; zeros, a fresh Adam's, before
the first step). The step count goes on: it counts the steps taken, rolled back or not (in a
batched fit Adam keeps one count for all the networks, so this keeps each network's fit equal to
its separate fit). The output, its average and the stopping criteria ignore the step.

The policy acts on runs of roll-backs: after ``max_recoveries`` in a row the learning rate is
lowered and the optimizer restarted; after ``max_lr_reductions`` such reductions the fit stops
(:func:`policy_action`). The runs are counted on the device (:func:`count_failed_run`) and read
with the other values of a log step (every ``trainer.log_every_n_steps`` steps), so the policy
acts at the first log step after such a run.

:class:`DivergenceGuard` is the part of :class:`~dip_lightning.tasks.DIPModule` that does this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule as _Base
else:
    _Base = object

__all__ = [
    "DivergenceGuard",
    "LastGoodState",
    "count_failed_run",
    "diverged",
    "lower_learning_rate",
    "observed_psnr",
    "policy_action",
]

log = logging.getLogger(__name__)

#: What the policy does after a log step: nothing, lower the learning rate, or stop the fit.
PolicyAction = Literal["continue", "lower", "stop"]


def observed_psnr(mse: torch.Tensor) -> torch.Tensor:
    """The PSNR (dB, peak 1) for a mean squared error ``mse``; at most 120 dB.

    >>> float(observed_psnr(torch.tensor(0.01)))
    20.0
    >>> float(observed_psnr(torch.tensor(0.0)))
    120.0
    """
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def diverged(
    loss: torch.Tensor,
    psnr: torch.Tensor,
    reference: torch.Tensor,
    drop_db: float | None,
    halted: bool = False,
) -> torch.Tensor:
    """Whether a step diverged (0-dim bool, on the device): its ``loss`` is not finite, its
    observed ``psnr`` is more than ``drop_db`` below the ``reference`` (that of the last good
    step; no such test when ``drop_db`` is ``None``), or the fit is ``halted``.

    >>> ref = torch.tensor(30.0)
    >>> bool(diverged(torch.tensor(0.1), torch.tensor(26.0), ref, 5.0))
    False
    >>> bool(diverged(torch.tensor(0.1), torch.tensor(24.0), ref, 5.0))
    True
    >>> bool(diverged(torch.tensor(float("nan")), torch.tensor(40.0), ref, None))
    True
    """
    bad = ~torch.isfinite(loss)
    if halted:
        bad = torch.ones_like(bad)
    if drop_db is not None:
        bad = bad | (psnr < reference - drop_db)
    return bad


def count_failed_run(failed: torch.Tensor, worst: torch.Tensor, bad: torch.Tensor) -> None:
    """Count a step into the run of roll-backs, in place on the device: ``failed`` (the current
    run) grows by one after a ``bad`` step and drops to 0 after a good one; ``worst`` keeps the
    longest run.

    >>> failed, worst = torch.tensor(0), torch.tensor(0)
    >>> for bad in (True, True, False, True):
    ...     count_failed_run(failed, worst, torch.tensor(bad))
    >>> int(failed), int(worst)
    (1, 2)
    """
    failed.add_(1).mul_(bad.long())
    torch.maximum(worst, failed, out=worst)


def policy_action(
    worst: int, max_recoveries: int, lr_reductions: int, max_lr_reductions: int
) -> PolicyAction:
    """What the policy does after a longest run of ``worst`` roll-backs, with ``lr_reductions``
    reductions made so far: ``continue`` below ``max_recoveries``, else ``lower`` the learning
    rate while fewer than ``max_lr_reductions`` were made, else ``stop``.

    >>> [policy_action(w, 5, 0, 3) for w in (4, 5)]
    ['continue', 'lower']
    >>> policy_action(5, 5, 3, 3)
    'stop'
    """
    if worst < max_recoveries:
        return "continue"
    if lr_reductions >= max_lr_reductions:
        return "stop"
    return "lower"


def lower_learning_rate(optimizers: Sequence[Any], factor: float) -> None:
    """Multiply every learning rate of ``optimizers`` by ``factor`` and clear their state (a
    fresh start: no momentum from the diverged steps)."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor
        optimizer.state.clear()


class DivergenceGuard(_Base):
    """The guard and the policy of a :class:`~dip_lightning.tasks.DIPModule`: the check of each
    output (:meth:`check_output`), the roll-back after the optimizer's step
    (:meth:`roll_back_diverged`), the counters (:meth:`record_guard`) and the policy
    (:meth:`apply_divergence_policy`), with their part of the checkpoint."""

    net: nn.Module | None
    lr: float
    loss_name: str
    guard_drop_db: float | None
    max_recoveries: int | None
    lr_decay_on_divergence: float
    max_lr_reductions: int
    lr_reductions: int
    stopped_on_divergence: bool
    halted: bool
    observation: torch.Tensor
    guard_psnr: torch.Tensor
    recoveries: torch.Tensor
    _bad: torch.Tensor | None
    _psnr_observed: torch.Tensor
    _failed_run: torch.Tensor | None
    _worst_run: torch.Tensor | None
    _last_good: LastGoodState
    _before_step: LastGoodState
    _loaded_good: dict[str, Any] | None

    if TYPE_CHECKING:

        def is_log_step(self, step: int) -> bool: ...

        def read_at_log_step(
            self, values: Sequence[torch.Tensor], then: Callable[[list[float]], None]
        ) -> None: ...

    def check_output(
        self, prediction: torch.Tensor, loss: torch.Tensor, data: torch.Tensor
    ) -> torch.Tensor:
        """The guard's check of this step's output (no sync): the PSNR of ``prediction``
        (``A(x_hat)``) against the observation (from the data term ``data`` when it is the
        MSE), and whether the step diverged (:func:`diverged`); kept as ``_psnr_observed`` and
        ``_bad`` for the roll-back, the logs and the stopping criteria."""
        if self.loss_name == "mse":
            observed_mse = data
        else:
            observed_mse = torch.nn.functional.mse_loss(prediction, self.observation)
        psnr = observed_psnr(observed_mse)
        bad = diverged(loss, psnr, self.guard_psnr, self.guard_drop_db, self.halted)
        self._bad = bad
        self._psnr_observed = psnr
        return bad

    def guarded_parameters(self) -> list[torch.Tensor] | None:
        """The network's trainable parameters when the guard is on, else ``None``."""
        if self.guard_drop_db is None or self.net is None:
            return None
        return [p for p in self.net.parameters() if p.requires_grad]

    def keep_state_before_step(self, params: Sequence[torch.Tensor], optimizer: Any) -> None:
        """Copy the state the step starts from (not yet known to be good); before the first
        step it is also the last good state."""
        keep_state_before_step(self._last_good, self._before_step, params, optimizer)

    def roll_back_diverged(self, params: Sequence[torch.Tensor], optimizer: Any, step: int) -> None:
        """After the optimizer's step: a good output makes the state that produced it the last
        good one; a diverged one sends the parameters back to that state. Then the counters,
        and at a log step the policy's read of the longest run."""
        bad = self._bad
        if bad is None:
            return
        with torch.no_grad():
            roll_back(self._last_good, self._before_step, params, optimizer, lambda tensor: bad)
            self.record_guard(bad)
        if self.max_recoveries is not None and self.is_log_step(step):
            self.check_divergence(step, self.apply_divergence_policy)

    def record_guard(self, bad: torch.Tensor) -> None:
        """After the roll-back of a step that was ``bad`` (or not): the guard's reference PSNR,
        the roll-back count and the run of roll-backs, on the device."""
        self.guard_psnr.copy_(torch.where(bad, self.guard_psnr, self._psnr_observed))
        self.recoveries.add_(bad.long())
        self._count_failed_run(bad)

    def check_divergence(self, step: int, act: Callable[[int, int], None]) -> None:
        """Queue the longest run of roll-backs since the last check for this log step's host
        read; ``act(step, run)`` gets it. The run is counted afresh from the current one."""
        if self._failed_run is None or self._worst_run is None:
            return
        worst = self._worst_run.clone()
        self._worst_run.copy_(self._failed_run)
        self.read_at_log_step([worst], lambda values: act(step, int(values[0])))

    def _count_failed_run(self, bad: torch.Tensor) -> None:
        """The length of the current run of roll-backs and the longest since the last check,
        on the device (no sync)."""
        if self.max_recoveries is None:
            return
        if self._failed_run is None or self._worst_run is None:
            self._failed_run = torch.zeros((), dtype=torch.long, device=bad.device)
            self._worst_run = torch.zeros((), dtype=torch.long, device=bad.device)
        elif self._failed_run.device != bad.device:
            self._failed_run = self._failed_run.to(bad.device)
            self._worst_run = self._worst_run.to(bad.device)
        count_failed_run(self._failed_run, self._worst_run, bad)

    def apply_divergence_policy(self, step: int, worst: int) -> None:
        """After a run of ``max_recoveries`` roll-backs (``worst`` is the longest since the last
        check): lower the learning rate and restart the optimizer from the last good
        parameters, or, after ``max_lr_reductions`` reductions, stop the fit (the restored
        image only ever took in good steps, so it is kept as it is)."""
        assert self.max_recoveries is not None
        action = policy_action(
            worst, self.max_recoveries, self.lr_reductions, self.max_lr_reductions
        )
        if action == "continue":
            return
        optimizers = list(self.trainer.optimizers)
        lr = float(optimizers[0].param_groups[0]["lr"]) if optimizers else self.lr
        if action == "stop":
            self.stopped_on_divergence = True
            self.trainer.should_stop = True
            log.warning(
                "stopped at step %d: %d steps in a row diverged and were rolled back even after "
                "%d learning-rate reductions (lr %g -> %g); kept the output of the good steps; "
                "try a lower model.lr",
                step,
                worst,
                self.lr_reductions,
                self.lr,
                lr,
            )
            return
        lower_learning_rate(optimizers, self.lr_decay_on_divergence)
        self._last_good.forget_state()
        self.lr_reductions += 1
        assert self._failed_run is not None and self._worst_run is not None
        self._failed_run.zero_()
        self._worst_run.zero_()
        log.warning(
            "step %d: %d steps in a row diverged; learning rate %g -> %g (reduction %d of %d), "
            "optimizer restarted from the last good parameters",
            step,
            worst,
            lr,
            lr * self.lr_decay_on_divergence,
            self.lr_reductions,
            self.max_lr_reductions,
        )

    def start_guard(self) -> None:
        """At the start of a fit: the last good state is the state the fit starts from (initial
        or loaded), taken before any callback's ``on_train_batch_start``."""
        self._last_good.reset()
        loaded, self._loaded_good = self._loaded_good, None
        if loaded is not None:
            self._last_good.load(loaded, self.device)
        elif self.guard_drop_db is not None and self.net is not None and self.trainer.optimizers:
            params = [p for p in self.net.parameters() if p.requires_grad]
            self._last_good.save(params, self.trainer.optimizers[0])
        self.stopped_on_divergence = False

    def guard_state(self) -> dict[str, Any]:
        """The guard's part of the checkpoint: the last good state (the parameters and optimizer
        state of the last step whose output passed, from which a diverged step starts again)
        and the policy's counters."""
        return {
            "last_good": self._last_good.saved(),
            "divergence": {
                "lr_reductions": self.lr_reductions,
                "failed_run": None if self._failed_run is None else self._failed_run.cpu(),
                "worst_run": None if self._worst_run is None else self._worst_run.cpu(),
            },
        }

    def load_guard_state(self, state: dict[str, Any]) -> None:
        """Take the guard's part of a checkpoint (:meth:`guard_state`)."""
        self._loaded_good = state.get("last_good")
        divergence = state.get("divergence", {})
        self.lr_reductions = int(divergence.get("lr_reductions", 0))
        self._failed_run = divergence.get("failed_run")
        self._worst_run = divergence.get("worst_run")

    def on_train_end(self) -> None:
        if self.lr_reductions and not self.stopped_on_divergence:
            optimizers = list(self.trainer.optimizers)
            lr = float(optimizers[0].param_groups[0]["lr"]) if optimizers else self.lr
            log.warning(
                "the fit diverged repeatedly: its learning rate was lowered %d time%s, "
                "from %g to %g; start from model.lr %g next time",
                self.lr_reductions,
                "" if self.lr_reductions == 1 else "s",
                self.lr,
                lr,
                lr,
            )


#: Adam's moments and the index of the beta a step with a zero gradient multiplies them by
_ZERO_GRADIENT_DECAY = {"exp_avg": 0, "exp_avg_sq": 1}


def keep_state_before_step(
    last_good: LastGoodState,
    before_step: LastGoodState,
    params: Sequence[torch.Tensor],
    optimizer: Any,
) -> None:
    """Before the optimizer's step: copy the state the step starts from into ``before_step``
    (not yet known to be good); before the first step it is also the last good state."""
    if not last_good.ready:
        last_good.save(params, optimizer)
    before_step.save(params, optimizer)


def roll_back(
    last_good: LastGoodState,
    before_step: LastGoodState,
    params: Sequence[torch.Tensor],
    optimizer: Any,
    bad_of: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """After the optimizer's step: where ``bad_of(tensor)`` is false the state the step started
    from becomes the last good one; where it is true the parameters and their optimizer state
    go back to the last good state."""
    last_good.advance(before_step, bad_of)
    last_good.restore(params, optimizer, bad_of)


class LastGoodState:
    """The divergence guard's copy of the last good state: the parameters and their
    optimizer's element-wise state, every state tensor of the parameter's shape (Adam's
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD's ``momentum_buffer``).

    :meth:`save` copies them into buffers kept from step to step; :meth:`restore` sets them
    back where a mask says, with ``torch.where`` on the device (no host sync). A state tensor
    that did not exist when the copy was taken (before the optimizer's first step, or after
    its state was cleared) is restored to zeros, the state of a fresh Adam. Adam's moments are
    restored as a step with a zero gradient leaves them (:meth:`restore`); other state, such as
    Adam's step count, is left as the step made it.
    """

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.state: list[dict[str, torch.Tensor]] = []
        #: whether a copy has been taken
        self.ready = False

    def reset(self) -> None:
        """Forget the copy (a new fit takes it again at its first step)."""
        self.params, self.state, self.ready = [], [], False

    def saved(self) -> dict[str, Any] | None:
        """The copy, on the CPU, for a checkpoint (``None`` before one is taken)."""
        if not self.ready:
            return None
        return {
            "params": [p.cpu() for p in self.params],
            "state": [{k: v.cpu() for k, v in state.items()} for state in self.state],
        }

    def load(self, saved: dict[str, Any], device: torch.device) -> None:
        """Take the copy of a checkpoint (:meth:`saved`) onto ``device``."""
        self.params = [p.to(device) for p in saved["params"]]
        self.state = [{k: v.to(device) for k, v in state.items()} for state in saved["state"]]
        self.ready = True

    def forget_state(self) -> None:
        """The optimizer's state was cleared: restore it to zeros until the next copy."""
        self.state = [{} for _ in self.state]

    @staticmethod
    def _state_of(optimizer: Any, param: torch.Tensor) -> dict[str, torch.Tensor]:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer's own
        state = optimizer.state.get(param, {})
        return {
            key: value
            for key, value in state.items()
            if isinstance(value, torch.Tensor)
            and value.shape == param.shape
            and value.device == param.device
        }

    def save(self, params: Sequence[torch.Tensor], optimizer: Any) -> None:
        """Copy ``params`` and their optimizer state as the last good state."""
        if len(self.params) != len(params):
            self.params = [torch.empty_like(p) for p in params]
            self.state = [{} for _ in params]
        targets, sources = list(self.params), [p.detach() for p in params]
        for param, saved in zip(params, self.state, strict=True):
            for key, value in self._state_of(optimizer, param).items():
                copy = saved.get(key)
                if copy is None or copy.shape != value.shape or copy.dtype != value.dtype:
                    copy = saved[key] = torch.empty_like(value)
                targets.append(copy)
                sources.append(value)
        with torch.no_grad():
            torch._foreach_copy_(targets, sources)
        self.ready = True

    def advance(self, newer: LastGoodState, bad_of: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Where ``bad_of(tensor)`` is false, take ``newer``'s copy (a missing state tensor is
        a fresh optimizer's zeros)."""
        with torch.no_grad():
            for mine, newer_param in zip(self.params, newer.params, strict=True):
                torch.where(bad_of(mine), mine, newer_param, out=mine)
            for mine_state, their_state in zip(self.state, newer.state, strict=True):
                for key in set(mine_state) | set(their_state):
                    ours, theirs = mine_state.get(key), their_state.get(key)
                    if ours is None:
                        assert theirs is not None
                        mine_state[key] = torch.where(bad_of(theirs), 0.0, theirs)
                    elif theirs is None:
                        ours.masked_fill_(~bad_of(ours), 0)
                    else:
                        torch.where(bad_of(ours), ours, theirs, out=ours)

    def restore(
        self,
        params: Sequence[torch.Tensor],
        optimizer: Any,
        bad_of: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """Where ``bad_of(tensor)`` (a mask broadcasting against ``tensor``) is true, set each
        parameter back to the copy, and its optimizer state to the copy as a step with a zero
        gradient leaves it: Adam's ``exp_avg`` times ``beta1`` and ``exp_avg_sq`` times
        ``beta2`` (what ``optimizer.step`` does to them for a zero gradient); other state as
        copied."""
        betas = {
            id(p): group.get("betas")
            for group in getattr(optimizer, "optimizer", optimizer).param_groups
            for p in group["params"]
        }
        with torch.no_grad():
            for param, good, saved in zip(params, self.params, self.state, strict=True):
                torch.where(bad_of(param), good, param, out=param)
                decay = betas.get(id(param))
                for key, value in self._state_of(optimizer, param).items():
                    mask = bad_of(value)
                    previous = saved.get(key)
                    if previous is None:
                        value.masked_fill_(mask, 0)
                        continue
                    if decay is not None and key in _ZERO_GRADIENT_DECAY:
                        previous = previous * decay[_ZERO_GRADIENT_DECAY[key]]
                    torch.where(mask, previous, value, out=value)
