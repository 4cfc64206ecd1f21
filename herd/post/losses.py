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


def response_lengths(batch: dict) -> torch.Tensor:
    return (batch["labels"] != IGNORE).sum(-1).clamp(min=1)


def rewards(model, batch: dict) -> torch.Tensor:
    """Reward-model score at each row's last token (a conversation's closing <|end|>)."""
    scores = model(batch["input_ids"]).float()
    return scores[torch.arange(scores.shape[0], device=scores.device), batch["last"]]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected - margin): the preference likelihood under Bradley-Terry;
    a margin (Llama 2) asks the chosen reward to lead by at least that much."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


def dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta: float,
             kind: str = "sigmoid") -> tuple[torch.Tensor, dict]:
    """Direct Preference Optimization on h = (log pi/ref)(chosen) - (log pi/ref)(rejected):
    `sigmoid` is DPO's -log sigmoid(beta h) (Rafailov et al. 2023); `ipo` is IPO's squared loss
    (h - 1/(2 beta))^2 (Azar et al. 2023), which stops pushing once the margin is reached (give it
    per-token mean log-probabilities, as its paper and TRL do)."""
    h = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    loss = (h - 1 / (2 * beta)).pow(2).mean() if kind == "ipo" else -F.logsigmoid(beta * h).mean()
    return loss, {"reward_margin": h.mean().detach(), "reward_accuracy": (h > 0).float().mean()}
