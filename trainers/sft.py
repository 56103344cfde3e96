"""Supervised fine-tuning: cross-entropy on the reference response and its end-of-sequence token.

The prompt is masked out of the loss (data.py). This is how teachers are prepared and where every distilled
student starts (the SFT checkpoint with the lowest validation loss, `base.best_checkpoint`). GPT-2 base settings
of the MiniLLM paper: lr 5e-4, 20 epochs, batch 32, cosine to 1e-7, weight decay 0.01, clip 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.trainers import register_trainer
from harness.trainers.base import TrainConfig, Trainer
from harness.trainers.data import IGNORE_INDEX


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions.

    logits: (B, L, V) predicting position t+1 from position t; labels: (B, L) with IGNORE_INDEX where unscored.
    """
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )


@dataclass
class SFTConfig(TrainConfig):
    """SFT needs only the shared settings."""


@register_trainer("sft")
class SFTTrainer(Trainer):
    config_class = SFTConfig

    def compute_loss(self, batch):
        loss = cross_entropy(self.student_logits(batch), batch["labels"])
        return loss, {"ce_loss": loss.item()}
