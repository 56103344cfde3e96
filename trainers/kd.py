"""Word-level knowledge distillation: (1 - r) CE(gold) + r soft-CE(teacher distribution, student), r = 0.5.

The soft cross-entropy -sum_v p(v) log q(v) differs from the forward KL(p || q) by the teacher's entropy, which
does not depend on the student, so both have the same gradient; logging the soft-CE keeps the loss comparable
with the CE term. Teacher and student see the same gold sequences (teacher forcing), temperature 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.trainers import register_trainer
from harness.trainers.base import TrainConfig, Trainer
from harness.trainers.data import IGNORE_INDEX
from harness.trainers.sft import cross_entropy


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of -sum_v p(v) log q(v); its gradient is that of forward KL(p || q).

    student_logits, teacher_logits: (B, T, V); mask: (B, T), 1 where the position is scored.
    """
    teacher_probs = F.softmax(teacher_logits.float(), dim=-1)
    per_token = -(teacher_probs * F.log_softmax(student_logits.float(), dim=-1)).sum(-1)  # (B, T)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, kd_ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1 - kd_ratio) CE + kd_ratio soft-CE on next-token predictions; returns (loss, ce, soft_ce).

    logits: (B, L, V) over the full sequence; labels: (B, L) with IGNORE_INDEX on prompt and padding.
    """
    ce = cross_entropy(student_logits, labels)
    mask = (labels[:, 1:] != IGNORE_INDEX).float()
    soft = soft_cross_entropy(student_logits[:, :-1], teacher_logits[:, :-1], mask)
    return (1 - kd_ratio) * ce + kd_ratio * soft, ce, soft


@dataclass
class KDConfig(TrainConfig):
    kd_ratio: float = 0.5  # r: weight of the soft-CE against the teacher; 1 - r goes to the gold CE


@register_trainer("kd")
class KDTrainer(Trainer):
    config_class = KDConfig
    needs_teacher = True

    def compute_loss(self, batch):
        loss, ce, soft = kd_loss(
            self.student_logits(batch), self.teacher_logits(batch), batch["labels"], self.config.kd_ratio
        )
        return loss, {"ce_loss": ce.item(), "kd_loss": soft.item()}
