"""anneal: a short run on a small high-quality mix (math and code) with the learning rate decayed
linearly to zero; the base model is the uniform average of the last checkpoints of that run
(Llama 3.1). Its control, anneal_control, runs the same steps and decay on the general mix."""

from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.anneal import AnnealConfig, anneal
from herd.training.config import TrainConfig

SPEC = StageSpec(__doc__, inputs=("base", "tokenizer"),
                 params={"seed": int, "train": TrainConfig, "anneal": AnnealConfig},
                 headline=("val_loss_hq_averaged",), plots=CURVE_PLOTS, model="base")


def run(st: StageRun) -> None:
    anneal(st, dict(st.cfg.anneal.mix))


if __name__ == "__main__":
    main(SPEC, run)
