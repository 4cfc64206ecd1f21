"""dpo: Direct Preference Optimization of the SFT policy, the SFT policy itself as the frozen
reference (its log-probabilities computed once per pair, before training). Pairs are on-policy: the
recipe samples them from this SFT policy (each prompt's best sample over every distinct sample that
loses to it), plus any preference data set. Optionally IPO, an NLL term on the chosen response
(Llama 3), LoRA/DoRA, and averaging with the previous round's policy."""

from herd.post.dpo import DPOConfig, optimize
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.config import TrainConfig

SPEC = StageSpec(__doc__, inputs=("policy", "samples"), optional=("previous",),
                 params={"seed": int, "train": TrainConfig, "dpo": DPOConfig},
                 plots=CURVE_PLOTS, model="policy", registers="policy_model", gated=True)


def run(st: StageRun) -> None:
    optimize(st, preference=True)


if __name__ == "__main__":
    main(SPEC, run)
