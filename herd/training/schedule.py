"""Learning-rate schedules as pure functions of the step."""

import math


def warmup_cosine(step: int, total: int, warmup: int, lr: float, min_lr_ratio: float) -> float:
    """Linear warmup (a cold Adam with a full learning rate diverges), then cosine decay to
    min_lr_ratio * lr: the pretraining schedule of Llama 3. Extend re-warms with the same shape."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def linear_to_zero(step: int, total: int, lr: float) -> float:
    """Annealing: decay linearly to exactly zero over the run (Llama 3.1's final stage)."""
    return lr * max(0.0, 1 - step / total)


def warmup_stable_decay(step: int, total: int, warmup: int, lr: float, min_lr_ratio: float,
                        decay_frac: float) -> float:
    """Warmup, a long constant phase, then a linear decay over the last decay_frac of the steps
    (WSD, MiniCPM): the stable phase can be extended without knowing the final length."""
    decay_start = int(total * (1 - decay_frac))
    if step < warmup:
        return lr * (step + 1) / warmup
    if step < decay_start:
        return lr
    progress = (step - decay_start) / max(1, total - decay_start)
    return lr * (1 - (1 - min_lr_ratio) * progress)
