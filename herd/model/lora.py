"""LoRA and DoRA fine-tuning as a model converter (torchtitan style), through the `peft` library.

`apply_lora` wraps the targeted Linear layers of a herd Llama in place with low-rank adapters
(W x + B A x * alpha / rank; DoRA also learns a per-row magnitude of the adapted weight) and
freezes every other parameter, so the training loop, which optimises only the parameters that
require gradients, trains the adapters alone. `merge_lora` folds the adapters into the base
weights and unwraps the layers: the result is the plain Llama again, with the state dict keys of
an unconverted one, so `save_checkpoint` and the Hugging Face export need no adapter support and
the exported model loads in `transformers` without `peft`.

Apply after the weights are initialised or loaded (`Llama.init_weights` would re-draw the
adapters), and merge before saving the final model.
"""

from dataclasses import dataclass, field

from torch import nn

from herd.config import ParamError, positive
from herd.errors import HerdError

# The attention and dense feed-forward projections of herd/model/llama.py. A mixture-of-experts
# model names its experts' projections w1, w2, w3 (and its router gate): list them in `targets`.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    rank: int = 0  # 0: off (full fine-tuning)
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input
    dora: bool = False  # weight-decomposed LoRA (DoRA)
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))  # Linear module names

    def check(self, root) -> None:
        if self.rank < 0:
            raise ParamError("rank", f"must be 0 (off) or more, got {self.rank}")
        positive(self, "alpha")
        if not 0 <= self.dropout < 1:
            raise ParamError("dropout", f"must be at least 0 and below 1, got {self.dropout}")
        if self.rank and not self.targets:
            raise ParamError("targets", "must name at least one Linear module when rank > 0")


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Inject LoRA (DoRA with `cfg.dora`) adapters into the Linear layers named in `cfg.targets`
    and freeze everything else; the model is returned unchanged when `cfg.rank` is 0."""
    if cfg.rank == 0:
        return model
    linears = sorted({name.rpartition(".")[2] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
    unknown = [t for t in cfg.targets if t not in linears]
    if unknown:
        raise HerdError(f"LoRA targets {unknown} match no module of the model; its Linear modules are {linears}")
    import peft  # here: it imports transformers, seconds that full fine-tuning need not pay

    config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_dora=cfg.dora,
                             target_modules=list(cfg.targets), bias="none")
    return peft.inject_adapter_in_model(config, model)


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight and put the plain Linear back, all parameters
    trainable again; a model without adapters is returned as it is."""
    if not hasattr(model, "peft_config"):
        return model
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    del model.peft_config
    model.requires_grad_(True)
    return model


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (a tied weight counted once)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
