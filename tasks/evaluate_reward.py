"""evaluate_reward: the reward model's accuracy on preference pairs built from the held-out test
problems (a right worked solution against a wrong one)."""

from herd.data.io import read_jsonl
from herd.data.tokens import load_tokenizer
from herd.evals.measures import EvaluateConfig
from herd.evals.preference import reward_accuracy
from herd.model.llama import load_checkpoint
from herd.post.chat import ChatFormat
from herd.stage import StageRun, StageSpec, main
from herd.training.config import TrainConfig

SPEC = StageSpec(__doc__, inputs=("reward", "corpus"),
                 params={"seed": int, "train": TrainConfig, "evaluate": EvaluateConfig}, headline=("heldout_accuracy",))


def run(st: StageRun) -> None:
    st.manifest["evaluates"] = st.upstream_manifest("reward")["stage"]
    judge_dir = st.input("reward") / "model"
    problems = read_jsonl(st.input("corpus") / "evals" / "math_test.jsonl")
    st.metrics["heldout_accuracy"] = reward_accuracy(load_checkpoint(judge_dir), ChatFormat(load_tokenizer(judge_dir)),
                                                     problems, st.seed, st.cfg.train.precision)
    st.metrics["heldout_pairs"] = len(problems)


if __name__ == "__main__":
    main(SPEC, run)
