"""A progress bar that counts towards the step where the stopping criterion will stop the fit.

A fit with a stopping criterion (``dip restore``) usually ends long before ``trainer.max_steps``,
so a bar whose total is the step cap shows an ETA of hours for a fit that stops in minutes.
:class:`StoppingProgressBar` shows instead, after the step count, the criterion's best step so far
and the patience left (``best 412, patience 388``), and its total (hence its ETA) is the step at
which the criterion stops if no better step comes, at most ``trainer.max_steps``. A better step
moves the total further. The bar learns the criteria's best steps only at the fit's log steps
(every ``trainer.log_every_n_steps``), in the module's one host read of such a step
(:meth:`~dip_lightning.tasks.base.DIPModule.read_at_log_step`), so it adds no host sync; in
between, the patience left counts down from what was read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from dip_lightning.callbacks.stopping import StoppingCriterion

__all__ = ["Outlook", "StoppingProgressBar", "outlook", "projected_stop", "stopping_criteria"]


def projected_stop(criterion: StoppingCriterion, best_step: int) -> int:
    """The step at which ``criterion`` stops the fit if no step scores better than
    ``best_step`` (0: none scored yet, so the best can be ``min_steps + 1`` at the earliest).

    >>> from dip_lightning.callbacks import HeldoutStopping
    >>> projected_stop(HeldoutStopping(patience=200, min_steps=50), 412)
    612
    >>> projected_stop(HeldoutStopping(patience=200, min_steps=50), 0)
    251
    >>> projected_stop(HeldoutStopping(patience=200, check_every_n_steps=25), 412)
    625
    """
    best = best_step if best_step > 0 else criterion.min_steps + 1
    stop = best + criterion.patience
    every = max(int(_check_interval(criterion)), 1)
    return math.ceil(stop / every) * every


def _check_interval(criterion: StoppingCriterion) -> int:
    """How often ``criterion`` checks its patience on the host (it stops at such a step)."""
    return getattr(criterion, "check_every_n_steps", None) or getattr(criterion, "_every", 1) or 1


@dataclass(frozen=True)
class Outlook:
    """Where a fit with stopping criteria stands, as read at a step: the step it ends at if no
    better step comes (at most the step cap), the best step (one image), and when the patience
    runs out (``None`` before a step is scored: then all of ``patience`` is left)."""

    end: int
    patience: int
    best_step: int | None = None
    runs_out: int | None = None
    stopped: int = 0
    images: int = 1

    def patience_left(self, step: int) -> int:
        """Steps without a better score left at ``step`` before the criterion stops."""
        if self.runs_out is None:
            return self.patience if self.stopped < self.images else 0
        return max(self.runs_out - step, 0)

    def describe(self, step: int) -> str:
        """``best 412, patience 388`` (``best -`` before a step is scored); for several images
        ``stopped 1 of 3, patience 388`` (the patience of the last one to stop)."""
        left = self.patience_left(step)
        if self.images > 1:
            return f"stopped {self.stopped} of {self.images}, patience {left}"
        best = "-" if not self.best_step else str(self.best_step)
        return f"best {best}, patience {left}"


def stopping_criteria(trainer: Trainer) -> list[StoppingCriterion]:
    """Every stopping criterion that stops ``trainer``'s fit, image after image."""
    return [criterion for fit in _criteria_of_each_fit(trainer) for criterion in fit]


def _criteria_of_each_fit(trainer: Trainer) -> list[list[StoppingCriterion]]:
    """The stopping criteria (those that stop) of each image the trainer fits: the trainer's
    own, or each member's of a batched fit."""
    callbacks: list[Any] = list(getattr(trainer, "callbacks", []))
    own = [c for c in callbacks if isinstance(c, StoppingCriterion) and c.stop]
    fits = [own] if own else []
    for callback in callbacks:
        for member in getattr(callback, "trainers", None) or []:
            criteria = [
                c
                for c in getattr(member, "callbacks", [])
                if isinstance(c, StoppingCriterion) and c.stop
            ]
            if criteria:
                fits.append(criteria)
    return fits


def outlook(trainer: Trainer, best_steps: Sequence[int] | None = None) -> Outlook | None:
    """The :class:`Outlook` of ``trainer``'s fit, ``None`` without a stopping criterion.

    ``best_steps``: each criterion's best step as read on the host (in the order of
    :func:`stopping_criteria`); without them, the best steps the criteria read at the last log
    step (no host sync)."""
    fits = _criteria_of_each_fit(trainer)
    if not fits:
        return None
    read = iter(best_steps) if best_steps is not None else None
    step = int(trainer.global_step)
    cap = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
    ends: list[int] = []
    # (end, when the patience runs out or None, the patience) of each image still fitting
    running: list[tuple[int, int | None, int]] = []
    bests: list[int] = []  # of the images still fitting
    stopped = 0
    for criteria in fits:
        done = [c.would_stop_step for c in criteria if c.would_stop_step is not None]
        if done:
            if read is not None:
                for _ in criteria:
                    next(read)
            stopped += 1
            ends.append(min(done))
            continue
        projections = []
        for criterion in criteria:
            # without values read now: the best step as read at the last log step (no sync)
            best = int(next(read)) if read is not None else criterion.read_best_step
            bests.append(best)
            runs_out = best + criterion.patience if best else None
            end = max(projected_stop(criterion, best), step)
            projections.append((end, runs_out, criterion.patience))
        first = min(projections, key=lambda p: p[0])  # the criterion that stops the fit
        ends.append(first[0])
        running.append(first)
    end = max(ends)
    if cap is not None:
        end = min(end, cap)
    last = max(running, key=lambda p: p[0]) if running else (end, end, 0)
    single_best = bests[0] if len(fits) == 1 and bests else None
    if len(fits) == 1 and stopped:
        chosen = [c.selection() for c in fits[0]]
        single_best = next((s[1] for s in chosen if s is not None), None)
    return Outlook(end, last[2], single_best, last[1], stopped, len(fits))


class StoppingProgressBar(TQDMProgressBar):
    """Lightning's bar, with the stopping criterion's outlook: its total is the step at which
    the criterion stops the fit if no better step comes (at most ``max_steps``), so its ETA is
    that of the fit's likely end, and its postfix starts with the best step and the patience
    left. Without a stopping criterion it is Lightning's bar.

    Args:
        description: the text before the bar.
        refresh_rate: update the bar every this many steps.
    """

    def __init__(self, description: str = "restoring", refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.description = description
        self.outlook: Outlook | None = None
        self._host_best_steps: list[int] | None = None

    def _read(self, trainer: Trainer) -> None:
        self.outlook = outlook(trainer, self._host_best_steps)
        self._host_best_steps = None

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Any
    ) -> None:
        """At a log step, queue the criteria's best steps for the module's one host read of
        the step (the criteria's own values go in the same read)."""
        bar = self.train_progress_bar
        step = int(trainer.global_step) + 1
        if bar is None or bar.disable or not _log_step(trainer, step):
            return
        queue = _host_queue(pl_module)
        tensors = [c.best_step for c in stopping_criteria(trainer)]
        if queue is None or not tensors or any(t is None for t in tensors):
            return  # read at the end of the step instead

        def took(host: list[float]) -> None:
            self._host_best_steps = [int(value) for value in host]

        queue(tensors, took)

    @property
    def train_description(self) -> str:
        return self.description

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version says nothing about the fit
        return items

    def on_train_epoch_start(self, trainer: Trainer, *args: Any) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        self._read(trainer)
        step = int(trainer.global_step)
        total = self.outlook.end if self.outlook is not None else self.total_train_batches
        bar.set_description(self.description, refresh=False)
        bar.reset(total=None if total is None or math.isinf(total) else total)
        bar.initial = step  # a resumed fit: the rate counts the steps of this run only
        bar.n = step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        step = int(trainer.global_step)
        fresh = _log_step(trainer, step) or bool(trainer.should_stop)
        if fresh:
            self._read(trainer)
        if self.outlook is not None and fresh:
            bar.total = max(self.outlook.end, step)
        if fresh or step % self.refresh_rate == 0 or step == bar.total:
            bar.n = step
            self._postfix(trainer, pl_module)
            bar.refresh()

    def _postfix(self, trainer: Trainer, pl_module: LightningModule) -> None:
        bar = self.train_progress_bar
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        if self.outlook is not None:
            rest = bar.postfix or ""
            status = self.outlook.describe(int(trainer.global_step))
            bar.set_postfix_str(status + (f", {rest}" if rest else ""), refresh=False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable:
            self._read(trainer)
            step = int(trainer.global_step)
            bar.total = step  # the fit ended here, whatever was expected
            bar.n = step
            self._postfix(trainer, pl_module)
            bar.refresh()
        if self._leave:
            bar.close()


def _log_step(trainer: Trainer, step: int) -> bool:
    """Whether ``step`` is one at which the fit reads its values on the host."""
    every = max(int(getattr(trainer, "log_every_n_steps", 1) or 1), 1)
    return step % every == 0 or step == trainer.max_steps


def _host_queue(module: LightningModule) -> Any:
    """The module's queue for its one host read of a log step
    (:meth:`~dip_lightning.tasks.base.DIPModule.read_at_log_step`; a batched fit's first
    member's, which the batched module reads with its own), or ``None``."""
    queue = getattr(module, "read_at_log_step", None)
    members_of = getattr(module, "dip_members", None)
    if queue is None and members_of is not None:
        members = list(members_of())
        queue = getattr(members[0], "read_at_log_step", None) if members else None
    return queue
