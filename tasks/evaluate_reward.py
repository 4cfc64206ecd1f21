"""evaluate_reward: the reward model's accuracy on held-out preference pairs: pairs constructed from
the post-training task's test problems (a right worked solution against a wrong, truncated or
off-topic one), and the pairs of any preference file (`evaluate.preference_files`, e.g. HH-RLHF's
test split: however weak a small model is there, the number is reported)."""

from herd.data.tokens import load_tokenizer
from herd.evals.measures import EvaluateConfig
from herd.evals.preference import reward_accuracy
from herd.model.llama import load_checkpoint
from herd.post.chat import ChatFormat
from herd.post.preference_data import load_preferences
from herd.post.task import TaskConfig, constructed_pairs, test_problems
from herd.stage import StageRun, StageSpec, main
from herd.training.config import TrainConfig

SPEC = StageSpec(__doc__, inputs=("reward", "corpus"),
                 params={"seed": int, "train": TrainConfig, "task": TaskConfig, "evaluate": EvaluateConfig},
                 headline=("heldout_accuracy*",))


def run(st: StageRun) -> None:
    st.manifest["evaluates"] = st.upstream_manifest("reward")["stage"]
    judge_dir = st.input("reward") / "model"
    judge, fmt, precision = load_checkpoint(judge_dir), ChatFormat(load_tokenizer(judge_dir)), st.cfg.train.precision
    problems = test_problems(st.cfg.task.kind, st.input("corpus") / "evals")
    pairs = constructed_pairs(problems, len(problems), st.seed)
    st.metrics["heldout_accuracy"] = reward_accuracy(judge, fmt, pairs, precision)
    st.metrics["heldout_pairs"] = len(pairs)
    for source in st.cfg.evaluate.preference_files:
        rows, _ = load_preferences(source, st.root)
        name = source.path.replace("/", "_").split(".")[0]
        st.metrics[f"heldout_accuracy_{name}"] = reward_accuracy(judge, fmt, rows, precision)
        st.metrics[f"heldout_pairs_{name}"] = len(rows)


if __name__ == "__main__":
    main(SPEC, run)
