"""dpo_control: the control of DPO. The same SFT policy, pairs, steps, learning rate and NLL term
on the chosen answers as round 1's dpo, with the preference term's weight at 0: what dpo gains over
it is the preference term's, not the extra training on the policy's own right answers."""

from herd.post.dpo import DPOConfig, optimize
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.config import TrainConfig

SPEC = StageSpec(__doc__, inputs=("policy", "samples"), params={"seed": int, "train": TrainConfig, "dpo": DPOConfig},
                 plots=CURVE_PLOTS, model="policy")


def run(st: StageRun) -> None:
    st.manifest["control_of"] = "dpo"
    optimize(st, preference=False)


if __name__ == "__main__":
    main(SPEC, run)
