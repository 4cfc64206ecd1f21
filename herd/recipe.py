"""The recipe, declared once: every stage, the module it runs and the upstream stages it reads.

Everything else is derived from this list. A stage module (tasks/<task>.py) declares the params
sections it reads and the roles of its inputs (its `SPEC`); `dvc.yaml` is generated from both
(`herd dag --write`; a test fails when the committed file differs), with each stage's code deps
computed from its imports; the Prefect flow reads DVC's graph of that file. Post-training runs in
`post.rounds` rounds (Llama 3): round r samples from round r-1's policy; stages of round r > 1 carry
the suffix `_r<r>`, so adding a round adds stages and changes none.
"""

import importlib
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from herd.config import ParamError, load_sections
from herd.data.corpus import CorpusConfig
from herd.errors import HerdError
from herd.evals.measures import EvaluateConfig
from herd.runtime.config import RuntimeConfig
from herd.runtime.env import project_root
from herd.training.anneal import AnnealConfig


@dataclass
class PostConfig:
    rounds: int = 1  # rejection_sample -> sft -> dpo_pairs -> dpo, repeated; each round samples from the last policy

    def check(self, root) -> None:
        if self.rounds < 1:
            raise ParamError("rounds", "must be at least 1")


@dataclass(frozen=True)
class Stage:
    name: str
    task: str  # runs `python -m tasks.<task>`
    inputs: tuple[tuple[str, str], ...] = ()  # (role, upstream stage)
    data: tuple[str, ...] = ()  # files and folders outside the pipeline that it reads (local corpus sources)

    @property
    def module(self) -> str:
        return f"tasks.{self.task}"

    @property
    def upstream(self) -> list[str]:
        return list(dict.fromkeys(stage for _, stage in self.inputs))

    @property
    def spec(self):
        return importlib.import_module(self.module).SPEC

    @property
    def sections(self) -> list[str]:
        return list(self.spec.params)

    @property
    def cmd(self) -> str:
        return " ".join([f"python -m {self.module} --name {self.name}",
                         *(f"--input {role}={stage}" for role, stage in self.inputs)])


def stage(name: str, task: str | None = None, **inputs: str) -> Stage:
    return Stage(name, task or name, tuple(inputs.items()))


def recipe(rounds: int = 1, sources: tuple[str, ...] = (), probes: tuple[str, ...] = (),
           eval_files: tuple[str, ...] = ()) -> list[Stage]:
    """The chain: data, pretraining, context extension, annealing (each of the two with its
    control), then post-training rounds and one evaluation per model, gathered in a report.
    `sources` are the local corpus sources, `probes` the data-value probes of `anneal.probes`,
    `eval_files` the held-out files the base models' evaluations read (`evaluate.answer_loss_files`)."""
    stages = [
        Stage("corpus", "corpus", data=tuple(sources)),
        stage("filter", corpus="corpus"),
        stage("tokenizer", filtered="filter"),
        stage("pretrain", tokenizer="tokenizer"),
        stage("extend", base="pretrain", tokenizer="tokenizer"),
        stage("extend_control", base="pretrain", tokenizer="tokenizer"),
        stage("anneal", base="extend", tokenizer="tokenizer"),
        stage("anneal_control", base="extend", tokenizer="tokenizer"),
        *(stage(f"anneal_probe_{p}", "anneal_probe", base="extend", tokenizer="tokenizer") for p in probes),
        stage("reward", base="anneal", filtered="filter", corpus="corpus"),
    ]
    # Every base model and control is evaluated; a control's evaluation sits beside its stage's.
    bases = ["pretrain", "extend", "extend_control", "anneal", "anneal_control", *(f"anneal_probe_{p}" for p in probes)]
    inputs = (("tokenizer", "tokenizer"), ("corpus", "corpus"))
    evals = [Stage(f"eval_{model}", "evaluate_base", (("model", model), *inputs), tuple(eval_files)) for model in bases]
    evals.append(stage("eval_reward", "evaluate_reward", reward="reward", corpus="corpus"))
    # Post-training rounds (Llama 3): each samples from the last round's policy (the annealed base
    # first) and fine-tunes it on the best samples, then samples the fine-tuned policy for DPO's
    # pairs, so they are its own (DPO on another model's samples made this task's policy worse); a
    # committee may also sample from the policies before it (AFM), and DPO may average with the
    # previous round's policy.
    chain = ["anneal"]
    for r in range(1, rounds + 1):
        suffix = "" if r == 1 else f"_r{r}"
        samples, sft, pairs, dpo = f"rejection_sample{suffix}", f"sft{suffix}", f"dpo_pairs{suffix}", f"dpo{suffix}"
        earlier = {f"earlier_{i}": model for i, model in enumerate(reversed(chain[:-1][-3:]), 1)}
        previous = {"previous": chain[-1]} if r > 1 else {}
        stages += [
            stage(samples, "rejection_sample", policy=chain[-1], reward="reward", corpus="corpus", filtered="filter",
                  **earlier),
            stage(sft, "sft", base=chain[-1], samples=samples),
            stage(pairs, "rejection_sample", policy=sft, reward="reward", corpus="corpus", filtered="filter"),
            stage(dpo, "dpo", policy=sft, samples=pairs, **previous),
            # Round 1's DPO has a control: the same run with the preference term off.
            *([stage("dpo_control", policy=sft, samples=pairs)] if r == 1 else []),
        ]
        evals += [
            stage(f"eval_{sft}", "evaluate_policy", policy=sft, judge="reward", tokenizer="tokenizer", corpus="corpus",
                  baseline=chain[-1]),
            # A round's champion decision waits for the last round's, so rounds are judged in order.
            stage(f"eval_{dpo}", "evaluate_policy", policy=dpo, judge="reward", tokenizer="tokenizer", corpus="corpus",
                  baseline=sft, **({"judged_after": f"eval_{chain[-1]}"} if r > 1 else {})),
            *([stage("eval_dpo_control", "evaluate_policy", policy="dpo_control", judge="reward",
                     tokenizer="tokenizer", corpus="corpus", baseline=sft)] if r == 1 else []),
        ]
        chain.append(dpo)
    # The report reads the filter and every training stage (curves, settings) besides the evaluations.
    trained = [s for s in stages if s.task in ("filter", "pretrain", "extend", "anneal", "anneal_control",
                                               "anneal_probe", "reward", "rejection_sample", "sft", "dpo",
                                               "dpo_control")]
    report = stage("report", **{s.name: s.name for s in trained + evals})
    return stages + evals + [report]


def stages(root: Path | None = None) -> list[Stage]:
    """The recipe as params.yaml shapes it: its `post.rounds`, its local `corpus.sources`, its
    `anneal.probes` and `evaluate.answer_loss_files`."""
    root = root or project_root()
    params = load_sections(root / "params.yaml", {"post": PostConfig, "corpus": CorpusConfig, "anneal": AnnealConfig,
                                                  "evaluate": EvaluateConfig})
    return recipe(params.post.rounds, tuple(OmegaConf.to_object(params.corpus).local_sources(root)),
                  tuple(params.anneal.probes), tuple(params.evaluate.answer_loss_files))


def schemas(steps: list[Stage]) -> dict[str, type]:
    """Every params section of the recipe with its schema, plus `post` and `runtime`."""
    found: dict[str, type] = {"post": PostConfig, "runtime": RuntimeConfig}
    for s in steps:
        for section, schema in s.spec.params.items():
            if found.setdefault(section, schema) is not schema:
                raise HerdError(f"section '{section}' has two schemas: {found[section].__qualname__} and "
                                f"{schema.__qualname__} ({s.module})")
    return found


def check_params(root: Path | None = None, overrides: list[str] = ()):
    """The whole params.yaml validated: every section any stage reads, `post` and `runtime`;
    a section nobody reads is an error (a typo would otherwise be ignored)."""
    root = root or project_root()
    params = load_sections(root / "params.yaml", schemas(stages(root)), overrides, strict=True)
    first = params.extend.steps[0].seq_len
    if first <= params.pretrain.seq_len:
        raise HerdError(f"params.yaml: extend.steps[0].seq_len: must be longer than pretrain.seq_len "
                        f"({params.pretrain.seq_len}): the stage lengthens the context, got {first}")
    return params
