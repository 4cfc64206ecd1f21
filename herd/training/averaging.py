"""Model averaging (Polyak / model soups): the weighted mean of several checkpoints' weights, used by
annealing (the last checkpoints) and by post-training rounds (the policies of successive rounds)."""

import torch


def averaged(model, states: list[dict], weights: list[float] | None = None):
    """`model` with the average of the weights in `states` loaded (uniform unless `weights`, which
    sum to 1, are given)."""
    w = torch.tensor(weights if weights is not None else [1 / len(states)] * len(states))

    def mean(k: str):  # on the first state's device: a checkpoint read from disk is on the CPU
        return sum(wi * s[k].to(states[0][k].device).float() for wi, s in zip(w, states, strict=True))

    model.load_state_dict({k: mean(k).to(states[0][k].dtype) for k in states[0]}, strict=False)
    return model
