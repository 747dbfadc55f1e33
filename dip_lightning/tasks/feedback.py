"""The structural-feedback term of a fit (:class:`~dip_lightning.losses.StructuralFeedback`).

:class:`FeedbackTerm` is the part of :class:`~dip_lightning.tasks.DIPModule` that adds it: the
known pixels it weighs, its own output average when the module keeps none, and its value at a
step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dip_lightning.degradations.base import Degradation
from dip_lightning.losses import StructuralFeedback

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule as _Base
else:
    _Base = object

__all__ = ["FeedbackTerm"]


class FeedbackTerm(_Base):
    """The feedback term ``lambda_t * (1 - s_t)`` of a :class:`~dip_lightning.tasks.DIPModule`."""

    feedback: StructuralFeedback | None
    degradation: Degradation | None
    ema_decay: float
    observation: torch.Tensor
    last_output: torch.Tensor
    output_ema: torch.Tensor
    holdout_keep: torch.Tensor | None
    feedback_known: torch.Tensor | None
    feedback_average: torch.Tensor | None

    def _attach_feedback(self) -> None:
        """The buffers of the feedback term: the known pixels ``(1, 1, h, w)`` of the
        observation (``A`` of an all-ones image non-zero in every channel, held-out pixels
        excluded; ``None`` when every pixel is observed) and, when it needs an output average and
        ``ema_decay`` is 0, its own."""
        known: torch.Tensor | None = None
        average: torch.Tensor | None = None
        if self.feedback is not None:
            assert self.degradation is not None
            shape = self.last_output.shape
            with torch.no_grad():
                known = (self.degradation(torch.ones(shape)) != 0).all(dim=1, keepdim=True)
            known = known.float()
            if self.holdout_keep is not None:
                known = known * self.holdout_keep
            if bool(known.all()):
                known = None  # every pixel is observed: no weighting
            if self.feedback.needs_average and self.ema_decay == 0:
                average = torch.zeros(shape)
        self.register_buffer("feedback_known", known)
        self.register_buffer("feedback_average", average)

    def feedback_term(self, x: torch.Tensor, prediction: torch.Tensor, step: int) -> torch.Tensor:
        """The feedback term at ``step`` for the output ``x`` and ``prediction = A(x)``; the
        average of the outputs of the steps before (none at step 1)."""
        assert self.feedback is not None
        average = self.output_ema if self.ema_decay > 0 else self.feedback_average
        return self.feedback(
            x,
            prediction=prediction,
            observation=self.observation,
            step=step,
            known=self.feedback_known,
            average=average if step > 1 else None,
        )
