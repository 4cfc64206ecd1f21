"""reward: a Bradley-Terry reward model (scalar head) on preference pairs: the base's own samples on
the reward half of the task's prompts, right over wrong by the verifier (on-policy, as Llama 3
collects preferences on its latest models' samples); pairs constructed from those prompts' worked
solutions (a right solution over a wrong, truncated or off-topic one); and any preference data
set (HH-RLHF, prompt/chosen/rejected files). One model for every criterion, as Llama 3. It starts
from the annealed base, or, given its own size (`reward.model`), from scratch."""

import json
import random
from dataclasses import dataclass, field

import torch

from herd.config import ParamError, check_part, non_negative, positive
from herd.data.io import in_holdout, read_table, write_jsonl
from herd.data.tokens import load_tokenizer
from herd.errors import HerdError
from herd.evals.preference import reward_accuracy
from herd.model.export import export_model
from herd.model.llama import Llama, LlamaConfig, load_checkpoint
from herd.post.chat import ChatFormat
from herd.post.generate import generate
from herd.post.losses import bradley_terry_loss, rewards
from herd.post.preference_data import PreferenceSource, check_sources, load_preferences
from herd.post.task import TaskConfig, constructed_pairs, exact_match, prompts
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.config import TrainConfig, check_optimization
from herd.training.loop import finish, train
from herd.training.schedule import warmup_cosine

SIZE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim")


@dataclass
class OnPolicyConfig:
    """The base's samples the reward model learns from (0 prompts: none)."""

    prompts: int = 600
    k: int = 8  # samples per prompt
    pairs_per_prompt: int = 8  # (right, wrong) pairs kept per prompt
    max_new_tokens: int = 32
    temperature: float = 0.8
    top_p: float = 0.95

    def check(self, root) -> None:
        non_negative(self, "prompts", "temperature")
        positive(self, "pairs_per_prompt", "max_new_tokens")
        if self.k < 2:
            raise ParamError("k", "needs at least 2 samples per prompt to pair a right and a wrong one")
        if not 0 < self.top_p <= 1:
            raise ParamError("top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass
class RewardConfig:
    onpolicy: OnPolicyConfig = field(default_factory=OnPolicyConfig)
    pairs: int = 1500  # constructed from the task's training problems
    datasets: list[PreferenceSource] = field(default_factory=list)  # preference data sets, mixed in
    heldout_frac: float = 0.1  # pairs kept aside to measure reward accuracy
    margin: float = 0.0  # Bradley-Terry with a margin: the chosen reward should lead by this much
    # A reward model of its own size (e.g. larger than the policy, as Gemma 2): architecture fields
    # (dim, n_layers, n_heads, n_kv_heads, ffn_dim) that differ from the base; it then trains from scratch.
    model: dict[str, int] = field(default_factory=dict)
    init_std: float = 0.02  # of a reward model trained from scratch
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 600
    lr: float = 1e-4  # a fine-tune of the base: of 5e-4 and 1e-4, 1e-4 held out best
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def check(self, root) -> None:
        check_optimization(self)
        check_part(self.onpolicy, root, "onpolicy.")
        positive(self, "init_std")
        non_negative(self, "pairs", "margin")
        if not 0 < self.heldout_frac < 1:
            raise ParamError("heldout_frac", f"must leave pairs to train on and to hold out (0 < frac < 1), got "
                             f"{self.heldout_frac}")
        for key, value in self.model.items():
            if key not in SIZE_FIELDS:
                raise ParamError(f"model.{key}", f"is not a size of the model; sizes are {', '.join(SIZE_FIELDS)}")
            if value < 1:
                raise ParamError(f"model.{key}", f"must be at least 1, got {value}")
        check_sources(self.datasets, root, "datasets")
        if not self.pairs and not self.datasets and not self.onpolicy.prompts:
            raise ParamError("pairs", "the reward model needs on-policy, constructed or data-set pairs to train on")


SPEC = StageSpec(__doc__, inputs=("base", "filtered", "corpus"),
                 params={"seed": int, "train": TrainConfig, "task": TaskConfig, "reward": RewardConfig},
                 plots=CURVE_PLOTS, model="reward", registers="reward_model")


def pair_batch(fmt: ChatFormat, pairs: list[dict], seq_len: int) -> dict:
    """Chosen rows first, then rejected rows, in one padded batch."""
    rows = [(fmt.render(p["messages"]), fmt.response(p[side])) for side in ("chosen", "rejected") for p in pairs]
    return fmt.conversations(rows, seq_len)


def bt_step(model, batch, margin: float = 0.0) -> tuple[torch.Tensor, dict]:
    r = rewards(model, batch)
    chosen, rejected = r.chunk(2)
    metrics = {"accuracy": (chosen > rejected).float().mean(), "tokens": batch["last"].sum() + len(r)}
    return bradley_terry_loss(chosen, rejected, margin), metrics


def onpolicy_pairs(st: StageRun, fmt: ChatFormat, rows: list[dict]) -> list[dict]:
    """The base's own samples on the reward half of the prompts, each prompt's right final answers
    over its wrong ones: an outcome reward model. (Trained on the verifier's verdict, which also
    rejects right answers with a wrong sum, it could not tell those apart from the prompt and ranked
    best-of-K below a random sample: 0.48 against 0.53 in seed 1234.)"""
    cfg = st.cfg.reward.onpolicy
    pool = prompts(st.cfg.task.kind, st.input("corpus") / "evals", rows, "reward")[: cfg.prompts]
    if not pool:
        return []
    outputs = generate(load_checkpoint(st.input("base") / "model"), [fmt.base_prompt(p["question"]) for p in pool],
                       cfg.max_new_tokens, fmt.stops, n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                       generator=torch.Generator().manual_seed(st.seed), precision=st.cfg.train.precision,
                       compile=st.cfg.runtime.generate.compile)
    rng, pairs = random.Random(f"onpolicy:{st.seed}"), []
    for problem, samples in zip(pool, outputs, strict=True):
        texts = list(dict.fromkeys(fmt.base_answer(s) for s in samples))
        right = [t for t in texts if exact_match(t, problem["answer"])]
        wrong = [t for t in texts if not exact_match(t, problem["answer"])]
        combos = [(r, w) for r in right for w in wrong]
        for chosen, rejected in rng.sample(combos, min(cfg.pairs_per_prompt, len(combos))):
            pairs.append({"messages": [{"role": "user", "content": problem["question"]}], "chosen": chosen,
                          "rejected": rejected, "source": "onpolicy", "id": f"onpolicy/{problem['id']}"})
    return pairs


def reward_model(cfg: RewardConfig, base, seed: int) -> Llama:
    """The base with a score head, or a fresh model of the configured size."""
    if not cfg.model:
        return load_checkpoint(base, head="score")
    arch = json.loads((base / "config.json").read_text())["herd"]
    model = Llama(LlamaConfig(**{**arch, **cfg.model}), head="score")
    model.init_weights(cfg.init_std, torch.Generator().manual_seed(seed))
    return model


def run(st: StageRun) -> None:
    cfg = st.cfg.reward
    base = st.input("base") / "model"
    fmt = ChatFormat(load_tokenizer(base))
    rows = read_table(st.input("filtered") / "train")
    problems = prompts(st.cfg.task.kind, st.input("corpus") / "evals", rows, "reward")
    if cfg.pairs and len(problems) < 10:
        raise HerdError(f"reward needs {st.cfg.task.kind} problems with worked solutions; found {len(problems)}")
    constructed = constructed_pairs(problems, cfg.pairs, st.seed) if cfg.pairs else []
    datasets, dropped = [], {}
    for source in cfg.datasets:
        rows, why = load_preferences(source, st.root)
        datasets += [{**row, "id": f"{source.path}/{i}"} for i, row in enumerate(rows)]
        dropped.update({f"dropped_{source.path}_{k}": v for k, v in why.items()})
    onpolicy = onpolicy_pairs(st, fmt, rows)
    sets = {"constructed": constructed, "onpolicy": onpolicy, "datasets": datasets}
    held_out = {name: [p for p in pairs if in_holdout(p["id"], cfg.heldout_frac)]
                for name, pairs in sets.items() if pairs}
    train_pairs = [p for pairs in sets.values() for p in pairs if not in_holdout(p["id"], cfg.heldout_frac)]
    if not train_pairs:
        raise HerdError("reward has no pairs to train on: the base got no prompt both right and wrong, and no "
                        "constructed pairs or data sets are configured")
    model = reward_model(cfg, base, st.seed)

    def batch_at(step: int) -> dict:
        g = torch.Generator().manual_seed(st.seed * 7919 + step)
        idx = torch.randint(0, len(train_pairs), (cfg.batch_size,), generator=g).tolist()
        return [pair_batch(fmt, [train_pairs[i] for i in idx], cfg.seq_len)]

    st.metrics.update(train(
        st, model, steps=cfg.steps, batch_at=batch_at, loss_fn=lambda m, b: bt_step(m, b, cfg.margin),
        lr_at=lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.lr, 0.1),
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
        key=st.run_key(),
    ))
    precision = st.cfg.train.precision
    for name, pairs in held_out.items():
        suffix = "" if name == "constructed" else f"_{name}"
        st.metrics[f"heldout_accuracy{suffix}"] = reward_accuracy(model, fmt, pairs, precision, cfg.seq_len)
        st.metrics[f"heldout_pairs{suffix}"] = len(pairs)
    st.metrics.update({"train_pairs": len(train_pairs), "params": model.num_params(), **dropped})
    export_model(st, model, base, "reward")
    write_jsonl([p for pairs in held_out.values() for p in pairs], st.out / "heldout_pairs.jsonl")
    finish(st)


if __name__ == "__main__":
    main(SPEC, run)
