"""anneal_control: the control of annealing. The same steps, learning-rate decay to zero and
checkpoint averaging as anneal, on the general mix (what pretraining drew) instead of the
high-quality one: what anneal gains over it is the data's, not the decay's."""

from herd.data.domains import general_mix
from herd.data.tokens import load_streams
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.anneal import AnnealConfig, anneal
from herd.training.config import TrainConfig

SPEC = StageSpec(__doc__, inputs=("base", "tokenizer"),
                 params={"seed": int, "train": TrainConfig, "anneal": AnnealConfig},
                 headline=("val_loss_hq_averaged",), plots=CURVE_PLOTS, model="base")


def run(st: StageRun) -> None:
    st.manifest["control_of"] = "anneal"
    anneal(st, general_mix(load_streams(st.input("tokenizer"), "train")))


if __name__ == "__main__":
    main(SPEC, run)
