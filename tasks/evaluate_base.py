"""evaluate_base: one base model (pretrain, extend, anneal, their controls and probes) on held-out
checks: loss by domain at the short context, loss on long documents at the long context and by
position, retrieval of generated needles by context length and depth (passkey, key-value,
multi-needle, quoted-passage QA) with the loss of their answers, exact match on the word problems
and on the post-training task from a plain prompt, and the answer loss on held-out question/answer
files (GSM8K test with real data). needles.png (the needle-in-a-haystack heatmaps) and the loss by
position go to MLflow."""

import mlflow

from herd import plots
from herd.data.io import read_jsonl
from herd.data.long_tasks import TaskMaker, haystack
from herd.data.tokens import load_streams, load_tokenizer
from herd.evals.answers import answer_loss, file_stem
from herd.evals.long_context import grid_metrics, loss_by_position, needle_grid
from herd.evals.measures import EvaluateConfig, model_measures
from herd.model.llama import load_checkpoint
from herd.post.chat import ChatFormat
from herd.post.task import TaskConfig
from herd.stage import Plot, StageRun, StageSpec, main
from herd.training.config import TrainConfig

SPEC = StageSpec(__doc__, inputs=("model", "tokenizer", "corpus"),
                 params={"seed": int, "train": TrainConfig, "task": TaskConfig, "evaluate": EvaluateConfig},
                 headline=("val_loss_mean_len*", "long_context_answer_loss", "task_exact_match"),
                 plots=(Plot("position", "position", "loss", "held-out loss by position on long documents"),))


def run(st: StageRun) -> None:
    cfg, precision = st.cfg.evaluate, st.cfg.train.precision
    upstream = st.upstream_manifest("model")
    st.manifest["evaluates"] = upstream["stage"]
    for link in ("control_of", "reference"):  # a control or a probe is judged against another model
        if link in upstream:
            st.manifest[link] = upstream[link]
    tok = load_tokenizer(st.input("tokenizer"))
    model = load_checkpoint(st.input("model") / "model")
    fmt = ChatFormat(tok)
    st.metrics.update(model_measures(st, model, fmt, chat=False))
    for path in cfg.answer_loss_files:
        examples = read_jsonl(st.root / path)[: cfg.answer_loss_examples]
        st.metrics[f"answer_loss_{file_stem(path)}"] = answer_loss(model, fmt, examples, precision)
    val = load_streams(st.input("tokenizer"), "validation")
    needles = needle_grid(model, TaskMaker(tok, haystack(val)), list(cfg.context_lengths), cfg.needle_depths,
                          cfg.needles_per_cell, st.seed, precision)
    st.metrics.update(grid_metrics(needles))
    # The headline long-context number: the answer loss at the extended context.
    st.metrics["long_context_answer_loss"] = st.metrics[f"answer_loss_len{cfg.long_seq_len}"]
    long_docs = {d: val[d] for d in ("long", "code") if d in val}
    position = loss_by_position(model, long_docs, cfg.long_seq_len, st.cfg.train.eval_batches,
                                cfg.position_buckets, precision)
    st.tables["needles"], st.tables["position"] = needles, position
    plots.needle_heatmaps(needles, f"{upstream['stage']}: retrieval and answer loss by context length and needle "
                                   f"depth", st.out / "needles.png")
    mlflow.log_artifact(str(st.out / "needles.png"), "plots")


if __name__ == "__main__":
    main(SPEC, run)
