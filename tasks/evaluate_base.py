"""evaluate_base: one base model (pretrain, extend, anneal) on held-out checks: loss by domain at
the short context, loss on long documents at the long context, passkey retrieval, math exact
match from a plain prompt."""

from herd.data.tokens import load_tokenizer
from herd.evals.measures import EvaluateConfig, model_measures
from herd.model.llama import load_checkpoint
from herd.post.chat import ChatFormat
from herd.stage import StageRun, StageSpec, main
from herd.training.config import TrainConfig

SPEC = StageSpec(__doc__, inputs=("model", "tokenizer", "corpus"),
                 params={"train": TrainConfig, "evaluate": EvaluateConfig},
                 headline=("val_loss_mean_len*", "val_loss_long_len*", "math_exact_match"))


def run(st: StageRun) -> None:
    st.manifest["evaluates"] = st.upstream_manifest("model")["stage"]
    tok = load_tokenizer(st.input("tokenizer"))
    model = load_checkpoint(st.input("model") / "model")
    st.metrics.update(model_measures(st, model, tok, ChatFormat(tok), chat=False))


if __name__ == "__main__":
    main(SPEC, run)
