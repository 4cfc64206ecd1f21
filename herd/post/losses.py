"""Post-training objectives."""

import torch
import torch.nn.functional as F

from herd.model.cross_entropy import IGNORE


def sequence_logprobs(model, batch: dict) -> torch.Tensor:
    """Sum of log p(response token) per row (prompt and padding excluded)."""
    logits = model(batch["input_ids"]).float()
    labels = batch["labels"]
    mask = labels != IGNORE
    logp = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def rewards(model, batch: dict) -> torch.Tensor:
    """Reward-model score at each row's last token (a conversation's closing <|end|>)."""
    scores = model(batch["input_ids"]).float()
    return scores[torch.arange(scores.shape[0]), batch["last"]]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected): the preference likelihood under Bradley-Terry."""
    return -F.logsigmoid(chosen - rejected).mean()


def dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta: float) -> tuple[torch.Tensor, dict]:
    """Direct Preference Optimization (Rafailov et al. 2023):
    -log sigmoid(beta * [(log pi/ref)(chosen) - (log pi/ref)(rejected)])."""
    chosen_ratio, rejected_ratio = pi_chosen - ref_chosen, pi_rejected - ref_rejected
    margin = beta * (chosen_ratio - rejected_ratio)
    loss = -F.logsigmoid(margin).mean()
    return loss, {"reward_margin": margin.mean().item() / beta,
                  "reward_accuracy": (margin > 0).float().mean().item()}
