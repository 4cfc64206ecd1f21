"""The typed schema of params.yaml and the loaders stages use.

params.yaml is the only place for knobs. It is loaded with OmegaConf and merged into the structured
schema below, so an unknown key, a wrong type or a missing input file fails before any work, with
the key's full name in the message. A stage sees only the sections dvc.yaml declares for it: what
it cannot see cannot silently change its output without DVC rerunning it.
"""

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from herd.env import project_root
from herd.errors import HerdError


@dataclass
class SourceConfig:
    """An extra corpus source read through `datasets.load_dataset`."""

    path: str  # a hub name ("HuggingFaceFW/fineweb-edu") or a local json/jsonl/parquet file
    domain: str  # web | prose | code | math | long
    text_field: str = "text"
    split: str = "train"
    name: str | None = None  # the hub dataset's config name
    limit: int | None = None  # read at most this many records


@dataclass
class CorpusConfig:
    """The built-in corpus, generated deterministically on the machine (DESIGN.md §4)."""

    code_files: int = 500  # Python standard-library modules
    prose_docs: int = 1500  # passages of Python's own documentation (reference and docstrings)
    math_problems: int = 6000  # arithmetic word problems with worked solutions
    math_test_problems: int = 200  # held out: evals, reward accuracy, decontamination
    passkey_docs: int = 150  # long documents with a pass key to retrieve
    passkey_test_docs: int = 30
    passkey_words: int = 600  # length of each passkey document in words
    web_pages: int = 1500  # generated low-quality pages the filter must remove
    sources: list[SourceConfig] = field(default_factory=list)


@dataclass
class FilterConfig:
    # Gopher / C4 / FineWeb heuristics (code has its own rules, math lower letter/digit thresholds)
    min_words: int = 5  # low: Wikipedia stubs are clean prose
    web_min_words: int = 80  # web pages that short are mostly fragments (DCLM labels: precision 0.60 -> 0.70)
    max_words: int = 100000
    min_mean_word_len: float = 2.5
    max_mean_word_len: float = 12.0
    max_symbol_ratio: float = 0.1  # "#", "..." and "$" per word
    max_digit_frac: float = 0.15  # digits per character (not for math)
    min_stopwords: int = 1  # English stop words a text must have (Gopher: 2, too strict for stubs)
    min_alpha_word_frac: float = 0.6  # words with at least one letter
    math_min_alpha_word_frac: float = 0.4  # worked solutions are full of numbers and operators
    max_duplicate_line_frac: float = 0.3
    max_duplicate_paragraph_frac: float = 0.3
    max_bullet_line_frac: float = 0.9
    max_ellipsis_line_frac: float = 0.3
    max_nonascii_frac: float = 0.2  # mojibake and binary junk that could not be repaired
    repetition_min_words: int = 100  # the n-gram repetition rules apply from this length on
    max_top_ngram_frac: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_duplicate_ngram_frac: dict[int, float] = field(default_factory=lambda: {5: 0.15, 7: 0.13, 10: 0.10})
    code_max_line_len: int = 1000
    code_min_lines: int = 5
    # model-based quality filter (reference text vs raw web) and domain labels
    quality_threshold: float = 0.2  # keep a document of a quality_domains domain if P(reference) >= this
    quality_domains: list[str] = field(default_factory=lambda: ["web"])
    reference_domains: list[str] = field(default_factory=lambda: ["prose"])
    classifier_docs: int = 3000  # training documents per class, at most
    classifier_epochs: int = 4
    # near-duplicates: MinHash over word n-grams, LSH with bands x rows hashes
    minhash_ngram: int = 5
    minhash_bands: int = 32
    minhash_rows: int = 4
    minhash_threshold: float = 0.65  # estimated Jaccard at which a later document is a duplicate
    minhash_min_words: int = 25  # shorter texts get exact dedup only
    near_dedup_domains: list[str] = field(default_factory=lambda: ["web", "prose", "long"])
    # decontamination against every eval set (AFM / GPT-3 style n-gram overlap)
    decontam_ngram: int = 13
    decontam_mode: str = "cut"  # cut the contaminated lines, or drop the whole document
    decontam_files: list[str] = field(default_factory=list)  # extra benchmark jsonl(.gz) files
    # measurements reported in metrics.json (e.g. ../shared/data/web/...): human quality labels
    # ({"text", "label"}) and pages with gold article bodies ({"text", "article_body"})
    quality_eval_files: list[str] = field(default_factory=list)
    boilerplate_eval_files: list[str] = field(default_factory=list)
    # mixing to target domain weights
    weights: dict[str, float] = field(
        default_factory=lambda: {"web": 0.05, "prose": 0.3, "code": 0.25, "math": 0.3, "long": 0.1}
    )
    max_repeats: int = 1  # how often a document may enter the mix (1: no repeats)
    starved_ratio: float = 0.1  # a domain this much scarcer than the best supplied one gives all it has
    validation_frac: float = 0.05
    # execution
    workers: int = 2  # processes scoring shards in parallel
    shard_size: int = 1000  # documents per shard (bounds memory per worker)


@dataclass
class TokenizerConfig:
    vocab_size: int = 4096
    min_frequency: int = 2
    special_tokens: list[str] = field(
        default_factory=lambda: ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"]
    )


@dataclass
class RampStep:
    """Use `value` until `until_tokens` training tokens have been seen (Llama 3.1's ramps)."""

    until_tokens: int
    value: int


@dataclass
class MixStep:
    """From `from_step` on, draw domains with these weights."""

    from_step: int
    weights: dict[str, float]


@dataclass
class DistillConfig:
    """Knowledge distillation from a frozen teacher with the same tokenizer (AFM, Gemma 2)."""

    teacher: str = ""  # a checkpoint folder, e.g. a previous Herd run's artifacts/anneal/model; "" = off
    mode: str = "top1"  # top1: AFM's weight x teacher top-1 + (1 - weight) x label; kl: Gemma 2's distribution
    weight: float = 0.9
    temperature: float = 1.0


@dataclass
class ModelConfig:
    """Llama-style decoder: grouped-query attention, RMSNorm pre-norm, SwiGLU, RoPE."""

    dim: int = 192
    n_layers: int = 4
    n_heads: int = 6
    n_kv_heads: int = 2
    ffn_dim: int = 512
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    n_experts: int = 0  # 0: dense SwiGLU; 8 with experts_per_token 2 is Mixtral's mixture of experts
    experts_per_token: int = 2
    router_aux_loss_coef: float = 0.01  # weight of the load-balancing loss


@dataclass
class TrainConfig:
    """Shared by every training stage."""

    precision: str = "bf16"  # bf16 autocast with fp32 master weights, or fp32
    checkpoint_every: int = 100  # steps between resumable checkpoints
    log_every: int = 10
    eval_batches: int = 8
    nproc_per_node: int = 1  # >1 relaunches training stages under torchrun (DDP)
    compile: bool = False  # torch.compile the decoder blocks: faster steps after a compile (pays off on long runs)


@dataclass
class PretrainConfig:
    seq_len: int = 256  # final sequence length
    batch_size: int = 16  # final sequences per optimizer step
    micro_batch_size: int = 16  # sequences per forward pass; batch_size / micro = gradient accumulation
    steps: int = 400
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine, or wsd (warmup-stable-decay)
    decay_frac: float = 0.2  # wsd: share of the steps spent decaying
    seq_len_ramp: list[RampStep] = field(default_factory=lambda: [RampStep(300_000, 128)])
    batch_ramp: list[RampStep] = field(default_factory=lambda: [RampStep(150_000, 8)])
    mix_schedule: list[MixStep] = field(default_factory=list)
    distill: DistillConfig = field(default_factory=DistillConfig)
    weight_decay: float = 0.1
    grad_clip: float = 1.0


@dataclass
class ExtendConfig:
    """Context lengthening: longer sequences, raised RoPE base, re-warmed and re-decayed LR."""

    seq_len: int = 1024
    rope_base: float = 100000.0
    batch_size: int = 4
    steps: int = 60
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    long_mix: dict[str, float] = field(default_factory=lambda: {"long": 0.6, "code": 0.4})  # long documents
    replay_frac: float = 0.05  # share of the original short-context mix (continued-pretraining replay)


@dataclass
class AnnealConfig:
    """A short run on a high-quality mix with the learning rate decayed linearly to zero."""

    seq_len: int = 512
    batch_size: int = 8
    steps: int = 80
    lr: float = 1e-3
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    mix: dict[str, float] = field(default_factory=lambda: {"math": 0.6, "code": 0.25, "prose": 0.15})
    average_last: int = 3  # average this many checkpoints from the end of the run
    average_every: int = 20


@dataclass
class RewardConfig:
    """Bradley-Terry reward model on verifiable preference pairs, started from the base."""

    pairs: int = 1500
    heldout_frac: float = 0.1  # pairs kept aside to measure reward accuracy
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 100
    lr: float = 5e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0


@dataclass
class RejectionSampleConfig:
    prompts: int = 160
    k: int = 4
    max_new_tokens: int = 96
    temperature: float = 0.8
    top_k: int = 50
    verifier_bonus: float = 1.0  # added to the reward of a sample whose final answer checks out


@dataclass
class SFTConfig:
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 60
    lr: float = 3e-4
    warmup_steps: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0


@dataclass
class DPOConfig:
    beta: float = 0.1
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 40
    lr: float = 1e-4
    warmup_steps: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0


@dataclass
class EvaluateConfig:
    math_problems: int = 60
    passkey_docs: int = 20
    max_new_tokens: int = 64
    win_rate_prompts: int = 40


@dataclass
class TrackingConfig:
    """Where runs go. Not a stage input: changing it never reruns a stage."""

    uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else a SQLite store in .herd/
    experiment: str = "herd"
    register: bool = True
    policy_model: str = "herd-policy"
    reward_model: str = "herd-reward"
    alias: str = "champion"


@dataclass
class Params:
    seed: int = 1234
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    extend: ExtendConfig = field(default_factory=ExtendConfig)
    anneal: AnnealConfig = field(default_factory=AnnealConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rejection_sample: RejectionSampleConfig = field(default_factory=RejectionSampleConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


DOMAINS = ("web", "prose", "code", "math", "long")
# Sections every stage may read because they never change a stage's output.
INFRASTRUCTURE_SECTIONS = ("tracking",)


def _check_semantics(params: DictConfig, root: Path) -> None:
    """Checks a type system cannot express, each naming the offending key."""

    def fail(key: str, why: str) -> None:
        raise HerdError(f"params.yaml: {key}: {why}")

    for i, src in enumerate(params.corpus.sources):
        key = f"corpus.sources[{i}]"
        if src.domain not in DOMAINS:
            fail(f"{key}.domain", f"'{src.domain}' is not one of {', '.join(DOMAINS)}")
        local = root / src.path
        looks_local = src.path.startswith((".", "/")) or src.path.endswith((".json", ".jsonl", ".gz", ".parquet"))
        if looks_local and not local.exists():
            fail(f"{key}.path", f"input file {local} does not exist")
    for key in ("decontam_files", "quality_eval_files", "boilerplate_eval_files"):
        for i, path in enumerate(params.filter[key]):
            if not (root / path).exists():
                fail(f"filter.{key}[{i}]", f"input file {root / path} does not exist")
    for section in ("filter.weights", "anneal.mix", "extend.long_mix"):
        weights = OmegaConf.select(params, section)
        for domain, weight in weights.items():
            if domain not in DOMAINS:
                fail(f"{section}.{domain}", f"unknown domain; expected one of {', '.join(DOMAINS)}")
            if weight < 0:
                fail(f"{section}.{domain}", "weights must be non-negative")
        if sum(weights.values()) <= 0:
            fail(section, "weights must not all be zero")
    if params.filter.decontam_mode not in ("cut", "drop"):
        fail("filter.decontam_mode", f"'{params.filter.decontam_mode}' is not cut or drop")
    for key in ("quality_domains", "reference_domains", "near_dedup_domains"):
        for domain in params.filter[key]:
            if domain not in DOMAINS:
                fail(f"filter.{key}", f"unknown domain '{domain}'")
    for key in ("workers", "shard_size"):
        if params.filter[key] < 1:
            fail(f"filter.{key}", "must be at least 1")
    if params.train.precision not in ("bf16", "fp32"):
        fail("train.precision", f"'{params.train.precision}' is not bf16 or fp32")
    if params.model.n_heads % params.model.n_kv_heads:
        fail("model.n_kv_heads", "must divide model.n_heads (grouped-query attention)")
    if params.model.dim % params.model.n_heads:
        fail("model.n_heads", "must divide model.dim")
    pre = params.pretrain
    if pre.schedule not in ("cosine", "wsd"):
        fail("pretrain.schedule", f"'{pre.schedule}' is not cosine or wsd")
    for i, step in enumerate(pre.batch_ramp):
        if not 0 < step.value <= pre.batch_size or step.value % min(step.value, pre.micro_batch_size):
            fail(f"pretrain.batch_ramp[{i}].value", "must be at most pretrain.batch_size and a multiple of "
                 "pretrain.micro_batch_size (or smaller than it)")
    for i, step in enumerate(pre.seq_len_ramp):
        if not 0 < step.value <= pre.seq_len:
            fail(f"pretrain.seq_len_ramp[{i}].value", "must be between 1 and pretrain.seq_len")
    if pre.batch_size % pre.micro_batch_size:
        fail("pretrain.batch_size", "must be a multiple of pretrain.micro_batch_size")
    for i, step in enumerate(pre.mix_schedule):
        for domain in step.weights:
            if domain not in DOMAINS:
                fail(f"pretrain.mix_schedule[{i}].weights.{domain}", "unknown domain")
    if pre.distill.mode not in ("top1", "kl"):
        fail("pretrain.distill.mode", f"'{pre.distill.mode}' is not top1 or kl")
    if pre.distill.teacher and not (root / pre.distill.teacher / "config.json").is_file():
        fail("pretrain.distill.teacher", f"no checkpoint (config.json) in {root / pre.distill.teacher}")
    m = params.model
    if m.n_experts and (m.n_experts < 2 or not 1 <= m.experts_per_token <= m.n_experts):
        fail("model.n_experts", "a mixture needs at least 2 experts and at least experts_per_token of them")
    if params.anneal.average_last < 1:
        fail("anneal.average_last", "must be at least 1")
    if params.rejection_sample.k < 2:
        fail("rejection_sample.k", "needs at least 2 samples per prompt to pick a best and a worst")


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Load params.yaml (plus `key=value` overrides) and validate it against the schema."""
    path = Path(path) if path else project_root() / "params.yaml"
    if not path.is_file():
        raise HerdError(f"params file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HerdError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise HerdError(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    try:
        params = OmegaConf.merge(OmegaConf.structured(Params), OmegaConf.create(raw))
        if overrides:
            params = OmegaConf.merge(params, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        reason = str(exc).splitlines()[0]
        raise HerdError(f"params.yaml: {key}: {reason}") from None
    _check_semantics(params, path.parent)
    return params


def stage_sections(stage: str, root: Path | None = None) -> list[str]:
    """The params sections dvc.yaml declares for `stage`."""
    dvc_yaml = (root or project_root()) / "dvc.yaml"
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    if stage not in stages:
        raise HerdError(f"dvc.yaml has no stage '{stage}'")
    sections = []
    for entry in stages[stage].get("params", []):
        keys = entry if isinstance(entry, str) else next(iter(entry.values()))
        for key in [keys] if isinstance(keys, str) else keys:
            sections.append(key.split(".")[0])
    return sections


def stage_config(stage: str, root: Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """The validated params a stage may read: its declared sections plus infrastructure ones."""
    root = root or project_root()
    params = load_params(root / "params.yaml", overrides)
    allowed = set(stage_sections(stage, root)) | set(INFRASTRUCTURE_SECTIONS)
    view = OmegaConf.masked_copy(params, sorted(allowed))
    OmegaConf.set_readonly(view, True)
    OmegaConf.set_struct(view, True)
    return view
