"""extend_control: the control of context extension. The pretrained model with the last extension
step's RoPE (base and scaling) and context, and no training: what extend gains over it at the long
context is the training's, not the RoPE change's."""

from herd.model.llama import load_checkpoint
from herd.stage import StageRun, StageSpec, main
from herd.training.config import TrainConfig
from herd.training.extend import ExtendConfig, apply_rope
from herd.training.lm_stage import save_model

SPEC = StageSpec(__doc__, inputs=("base", "tokenizer"), params={"train": TrainConfig, "extend": ExtendConfig},
                 model="base")


def run(st: StageRun) -> None:
    st.manifest["control_of"] = "extend"
    model = load_checkpoint(st.input("base") / "model")
    apply_rope(model, st.cfg.extend.steps[-1], model.cfg.max_seq_len)
    save_model(st, model, st.input("tokenizer"))


if __name__ == "__main__":
    main(SPEC, run)
