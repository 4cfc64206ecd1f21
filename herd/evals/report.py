"""The report: what each stage of the recipe did and whether it helped, as report.md and as one
self-contained report.html (plots inlined, inline CSS, nothing fetched), with a verdict per model.

`gather` reads the report stage's inputs (each upstream stage under its own name): the evaluations
(each names the stage it `evaluates`, a policy's the `baseline` of its win rate, a control's the
stage it is the `control_of`), the training stages (metrics, params, curve.csv: `step,loss,lr`)
and the filter (metrics, funnel.png).

Verdicts: every model is compared, on the measures that matter for its stage (MATTERS), with the
model before it in the chain (pretrain, extend, anneal, sft, dpo, then each later round's sft and
dpo), the first model with a unigram model (the corpus' entropy), a reward model with chance, and
every model with its controls. A difference within the noise band (ReportConfig) is no effect.
Within one comparison a measure that got worse makes it worse, else one that improved makes it
improved; across comparisons the least favourable is the stage's verdict: a gain that a control
shows too is not the stage's doing.
"""

import base64
import csv
import html
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from herd import plots
from herd.config import fraction

IMPROVED, NO_EFFECT, WORSE = "improved", "no effect", "worse"
RANK = (WORSE, NO_EFFECT, IMPROVED)  # least favourable first
TIE = 0.5  # a model's win rate over itself, and a reward model's accuracy by chance
LOSS = re.compile(r"val_loss_(\w+?)_len(\d+)$")
ANSWER_LOSS = re.compile(r"answer_loss_len(\d+)$")
PASSKEY = re.compile(r"retrieval_passkey_len(\d+)$")
RATES = {"math_exact_match": "math exact match", "task_exact_match": "task exact match",
         "win_rate_verifier": "win rate (verifier)", "win_rate_reward": "win rate (reward)",
         "heldout_accuracy": "reward accuracy"}
WIN_RATES = ("win rate (verifier)", "win rate (reward)")
COLUMNS = ("held-out loss", "math loss", "long-document loss", "long-context answer loss", "passkey accuracy",
           "math exact match", "task exact match", *WIN_RATES)

# What each stage is for, hence what its verdict is decided on (a stage not listed: every measure).
# Post-training is expected to raise the loss on the pretraining domains; that is not what it is for.
MATTERS = {
    "pretrain": ("held-out loss",),
    "extend": ("long-context answer loss", "long-document loss", "passkey accuracy"),
    "anneal": ("math loss", "math exact match"),
    "anneal_probe": ("math loss", "held-out loss", "math exact match"),
    "reward": ("reward accuracy",),
    "sft": ("task exact match", *WIN_RATES),
    "dpo": ("task exact match", *WIN_RATES),
}
DOES = {
    "pretrain": "Trains the model from random weights on the filtered training mix.",
    "extend": "Continues pretraining in steps of longer context, each with a raised RoPE base and a re-warmed "
              "and re-decayed learning rate, on long documents, generated long-context tasks and a replay of "
              "the mix; judged against its control, the pretrained model with the same RoPE and no training.",
    "anneal": "A short run on a high-quality mix with the learning rate decayed to zero; the model is the "
              "average of its last checkpoints. Judged against its control, the same run on the general mix.",
    "anneal_probe": "A data-value probe: annealing with part of the general mix replaced by a candidate mix, "
                    "judged against the anneal control.",
    "reward": "A Bradley-Terry reward model, trained to prefer the base's right samples over its wrong ones, and "
              "right worked solutions over wrong, truncated or off-topic ones (and on any preference data set).",
    "sft": "Supervised fine-tuning of the current policy (the annealed base in round 1), in the chat format, on "
           "the best of K answers it sampled per prompt, as ranked by the verifier and the reward model.",
    "dpo": "Direct Preference Optimization of the SFT policy on its own samples: each prompt's best answer over "
           "every distinct answer that loses to it. Round 1's is judged against its control, the same run with "
           "the preference term off (the NLL term on the chosen answers alone).",
}
SETTINGS = {"seq_len": "context {} tokens", "steps": "{} steps", "lr": "peak learning rate {}",
            "batch_size": "batch {}", "rope_base": "RoPE base {}", "beta": "β {}", "mix": "mix {}",
            "long_mix": "long-context mix {}", "replay_frac": "replay {}", "task_frac": "generated tasks {}",
            "average_last": "average of the last {} checkpoints"}


@dataclass
class ReportConfig:
    """When a difference between two models is an effect: within the band it is "no effect"."""

    loss_noise: float = 0.01  # relative: losses of different stages and contexts differ in scale
    # absolute: accuracy, exact match, win rate; two standard errors of a rate near 0.5 on ~400 items
    rate_noise: float = 0.05

    def check(self, root) -> None:
        fraction(self, "loss_noise", "rate_noise")


@dataclass
class Evaluation:
    metrics: dict
    baseline: str | None = None  # the policy its win rate is measured against
    control_of: str | None = None  # the stage it is a control of
    reference: str | None = None  # the model it is judged against instead of the previous one (a probe's)
    needles: Path | None = None  # its needle-in-a-haystack heatmaps
    position: list[dict] = field(default_factory=list)  # its loss by position on long documents


@dataclass
class Training:
    metrics: dict
    params: dict  # the params sections it read, as its manifest records them
    curve: list[dict]  # {step, loss, lr} per logged step


@dataclass
class Results:
    evaluations: dict[str, Evaluation] = field(default_factory=dict)  # by evaluated stage, in recipe order
    training: dict[str, Training] = field(default_factory=dict)  # by stage
    filter: dict | None = None  # the filter's metrics
    funnel: Path | None = None  # the filter's funnel.png


# ---------------------------------------------------------------- reading


def gather(folders: dict[str, Path]) -> Results:
    """The outputs of the report's upstream stages (role -> folder), in recipe order."""
    results = Results()
    for folder in folders.values():
        manifest = json.loads((folder / "manifest.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics.pop("wall_time_s", None)
        if "evaluates" in manifest:
            results.evaluations[manifest["evaluates"]] = Evaluation(
                metrics, manifest.get("baseline"), manifest.get("control_of"), manifest.get("reference"),
                folder / "needles.png" if (folder / "needles.png").is_file() else None,
                read_table(folder / "position.csv", {"position": int, "loss": float}),
            )
        elif manifest["stage"] == "filter":
            results.filter, results.funnel = metrics, folder / "funnel.png"
        else:
            curve = read_table(folder / "curve.csv", {"step": int, "loss": float, "lr": float})
            results.training[manifest["stage"]] = Training(metrics, manifest["params"], curve)
    return results


def read_table(path: Path, columns: dict[str, type]) -> list[dict]:
    """A table a stage wrote (curve.csv, position.csv), its columns typed; none if it wrote none."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: cast(r[k]) for k, cast in columns.items()} for r in csv.DictReader(fh)]


# ---------------------------------------------------------------- measures


def lengths(metrics: dict, domain: str) -> dict[int, float]:
    """{context length: held-out loss} of one domain ("mean": the mean over domains)."""
    return {int(m.group(2)): value for key, value in metrics.items() if (m := LOSS.match(key)) and m.group(1) == domain}


def headline(metrics: dict) -> dict[str, float]:
    """An evaluation's headline numbers by name: the mean held-out loss over domains and the math
    loss at the shortest context, the loss on long documents at the longest, and there the loss of
    the answers of generated long-context tasks and passkey retrieval; math exact match, the win
    rate over the baseline, a reward model's accuracy on held-out pairs."""
    out = {}
    mean, long, math_ = lengths(metrics, "mean"), lengths(metrics, "long"), lengths(metrics, "math")
    if mean:
        out["held-out loss"] = mean[min(mean)]
    if math_:
        out["math loss"] = math_[min(math_)]
    if long:
        longest = max(long)
        out["long-document loss"] = long[longest]
        if f"answer_loss_len{longest}" in metrics:
            out["long-context answer loss"] = metrics[f"answer_loss_len{longest}"]
        if f"retrieval_passkey_len{longest}" in metrics:
            out["passkey accuracy"] = metrics[f"retrieval_passkey_len{longest}"]
    out.update({name: metrics[key] for key, name in RATES.items() if key in metrics})
    return out


def is_loss(measure: str) -> bool:
    return measure.endswith("loss")


def change_of(measure: str, before: float, after: float) -> float:
    """Relative for a loss (losses differ in scale), absolute for a rate."""
    return (after - before) / before if is_loss(measure) else after - before


def signed(measure: str, delta: float) -> str:
    text = f"{delta:+.1%}" if is_loss(measure) else f"{delta:+.3f}"
    return text.replace("-", "−")


def band(measure: str, noise: float) -> str:
    return f"{noise * 100:g}%" if is_loss(measure) else f"±{noise:g}"


def listing(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return " and ".join(filter(None, [", ".join(items[:-1]), items[-1]]))


def kind(stage: str) -> str:
    """The stage's task: a later round's stages carry the suffix _r<round>, a probe its name."""
    task = re.sub(r"_r\d+$", "", stage)
    return "anneal_probe" if task.startswith("anneal_probe_") else task


def section(stage: str) -> str:
    """The params section a training stage reads: a control's or probe's is its stage's."""
    sections = {"anneal_probe": "anneal", "anneal_control": "anneal", "dpo_control": "dpo",
                "dpo_pairs": "rejection_sample"}
    return sections.get(kind(stage), kind(stage))


# ---------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Change:
    """One measure of a model against a reference's."""

    measure: str
    before: float  # the reference's
    after: float  # the model's
    noise: float  # the band within which a difference is no effect: relative for a loss, absolute for a rate

    @property
    def delta(self) -> float:
        return change_of(self.measure, self.before, self.after)

    @property
    def verdict(self) -> str:
        if abs(self.delta) <= self.noise * (1 + 1e-9):  # a difference of exactly the band, despite rounding
            return NO_EFFECT
        return IMPROVED if (self.delta < 0) == is_loss(self.measure) else WORSE

    def describe(self) -> str:
        outcome = {IMPROVED: "better", WORSE: "worse"}.get(self.verdict,
                                                          f"within the {band(self.measure, self.noise)} noise band")
        return f"{self.measure} {self.before:.3f} → {self.after:.3f} ({signed(self.measure, self.delta)}, {outcome})"


@dataclass(frozen=True)
class Comparison:
    reference: str  # what the model is compared with, as the sentence names it
    changes: tuple[Change, ...]

    @property
    def verdict(self) -> str:
        found = {c.verdict for c in self.changes}
        return WORSE if WORSE in found else IMPROVED if IMPROVED in found else NO_EFFECT


@dataclass(frozen=True)
class Verdict:
    stage: str
    comparisons: tuple[Comparison, ...]

    @property
    def verdict(self) -> str:
        return min((c.verdict for c in self.comparisons), key=RANK.index)

    @property
    def reason(self) -> str:
        return "; ".join(f"against {c.reference}, " + listing([ch.describe() for ch in c.changes])
                         for c in self.comparisons) + "."

    @property
    def sentence(self) -> str:
        return f"{self.stage}: {self.verdict} — {self.reason}"


def previous_models(results: Results) -> dict[str, str | None]:
    """Each language model's predecessor in the chain: the model evaluated before it (reward
    models, controls and probes are not links); a control's is that of the stage it controls, a
    probe's the model it is judged against."""
    out, last = {}, None
    for stage, ev in results.evaluations.items():
        if not ev.control_of and not ev.reference and "heldout_accuracy" not in ev.metrics:
            out[stage], last = last, stage
    for stage, ev in results.evaluations.items():
        if ev.control_of:
            out[stage] = out.get(ev.control_of)
        elif ev.reference:
            out[stage] = ev.reference if ev.reference in results.evaluations else None
    return out


def references(stage: str, results: Results, previous: dict[str, str | None]) -> list[tuple[str, dict]]:
    """What a model is compared with, by name, and the reference's headline numbers."""
    refs, before = [], previous.get(stage)
    if before:
        theirs = headline(results.evaluations[before].metrics)
        if results.evaluations[stage].baseline == before:  # the win rates are over the previous model, ...
            theirs.update(dict.fromkeys(WIN_RATES, TIE))  # ... which ties with itself
        refs.append((before, theirs))
    elif stage in results.training and "unigram_entropy" in results.training[stage].metrics:
        entropy = results.training[stage].metrics["unigram_entropy"]
        refs.append(("a unigram model (the corpus' entropy)", {"held-out loss": entropy}))
    if "heldout_accuracy" in results.evaluations[stage].metrics:
        refs.append(("chance", {"reward accuracy": TIE}))
    refs += [(f"its control {name}", headline(ev.metrics)) for name, ev in results.evaluations.items()
             if ev.control_of == stage]
    return refs


def verdicts(results: Results, cfg: ReportConfig) -> list[Verdict]:
    """A verdict for every evaluated model but the controls, in recipe order."""
    previous = previous_models(results)
    out = []
    for stage, ev in results.evaluations.items():
        if ev.control_of:
            continue
        numbers = headline(ev.metrics)
        matters = MATTERS.get(kind(stage), tuple(numbers))
        comparisons = []
        for reference, theirs in references(stage, results, previous):
            changes = tuple(Change(m, theirs[m], numbers[m], cfg.loss_noise if is_loss(m) else cfg.rate_noise)
                            for m in matters if m in numbers and m in theirs)
            if changes:
                comparisons.append(Comparison(reference, changes))
        if comparisons:
            out.append(Verdict(stage, tuple(comparisons)))
    return out


def summary_paragraph(found: list[Verdict], cfg: ReportConfig) -> str:
    if not found:
        return "No model was evaluated."
    phrases = {IMPROVED: "improved", NO_EFFECT: "had no measurable effect", WORSE: "got worse"}
    groups = [(phrases[v], [x.stage for x in found if x.verdict == v]) for v in (IMPROVED, NO_EFFECT, WORSE)]
    said = "; ".join(f"{listing(stages)} {phrase}" for phrase, stages in groups if stages)
    return (f"In short: {said}. Each model is compared with the model before it (the first with a unigram "
            f"model, the reward model with chance, any model with its controls) on the measures its stage is "
            f"meant to move; a difference under {band('loss', cfg.loss_noise)} in a loss or "
            f"{cfg.rate_noise:g} in a rate counts as no effect.")


def summary(report_dir: Path) -> str:
    """The verdict of every model stage, one plain sentence a line (`herd report` prints it)."""
    found = json.loads((report_dir / "verdicts.json").read_text())
    return "\n".join(v["sentence"] for v in found.values())


# ---------------------------------------------------------------- tables and plots


def loss_table(results: Results) -> tuple[dict[str, dict[str, float]], int | None]:
    """{stage: {domain: loss}} at the short context (every language model has it), and that context."""
    table, short = {}, None
    for stage, ev in results.evaluations.items():
        found = {}
        for key, value in ev.metrics.items():
            m = LOSS.match(key)
            if m and m.group(1) != "mean":
                found.setdefault(int(m.group(2)), {})[m.group(1)] = value
        if found:
            short = min(found)
            table[stage] = found[short]
    return table, short


def rate_table(results: Results) -> dict[str, dict[str, float]]:
    """{stage: {measure: share}}: math exact match and passkey accuracy of every language model."""
    names = ("math exact match", "task exact match", "passkey accuracy")
    table = {stage: {n: v for n, v in headline(ev.metrics).items() if n in names}
             for stage, ev in results.evaluations.items()}
    return {stage: row for stage, row in table.items() if row}


SAMPLING = {"random_correct_rate": "a random sample right", "best_of_k_verifier_correct_rate": "best of K by verifier",
            "best_of_k_reward_correct_rate": "best of K by reward model", "reward_onpolicy_accuracy":
            "reward accuracy on these samples", "sft_examples": "SFT examples", "dpo_pairs": "DPO pairs"}


def sampling_blocks(results: Results) -> list[tuple]:
    """Each round's rejection sampling (of the last policy for SFT, of the SFT policy for DPO's
    pairs): how often a random sample, the verifier's and the reward model's best of K are right,
    and the reward model's accuracy on these on-policy samples."""
    rounds = {stage: t.metrics for stage, t in results.training.items() if "random_correct_rate" in t.metrics}
    if not rounds:
        return []
    # Each sampling feeds one stage: its SFT examples or its DPO pairs, not both.
    unused = {"rejection_sample": "dpo_pairs", "dpo_pairs": "sft_examples"}
    rows = [[stage, *(f"{m[key]:g}" if key in m and key != unused.get(kind(stage)) else "" for key in SAMPLING)]
            for stage, m in rounds.items()]
    return [("h2", "Rejection sampling"), ("table", ["stage", *SAMPLING.values()], rows),
            ("p", "rejection_sample samples the last policy for SFT, dpo_pairs the SFT policy for DPO. "
                  "Shares of the round's prompts whose answer is right (a random sample: of all samples); the "
                  "reward model's accuracy is over every (right, wrong) pair of samples of one prompt, prompts it "
                  "never saw in training.")]


def by_context_length(results: Results, pattern: re.Pattern) -> dict[str, dict[int, float]]:
    """{stage: {context length: value}} of a measure taken at several lengths (`pattern` captures it)."""
    table = {stage: {int(m.group(1)): value for key, value in ev.metrics.items() if (m := pattern.match(key))}
             for stage, ev in results.evaluations.items()}
    return {stage: row for stage, row in table.items() if len(row) > 1}


def write_plots(results: Results, out: Path) -> list[tuple[str, str]]:
    """The report's figures as PNG files in `out`, (file name, caption) each; a figure whose data
    does not exist is left out (no placeholder data)."""
    figures = []
    if results.funnel and results.funnel.is_file():
        shutil.copy(results.funnel, out / "funnel.png")
        figures.append(("funnel.png", "The filter: documents left after each step, the rejects per rule, and the "
                                      "mix to the domain weights."))
    curves = {stage: t.curve for stage, t in results.training.items() if t.curve}
    if curves:
        plots.curve_panels(curves, "loss", "loss", "training loss by step", out / "loss_curves.png")
        plots.curve_panels(curves, "lr", "learning rate", "learning rate by step", out / "learning_rate.png")
        figures += [("loss_curves.png", "Training loss of every training stage, by step."),
                    ("learning_rate.png", "Learning rate of every training stage, by step.")]
    losses, short = loss_table(results)
    if losses:
        plots.grouped_bars(losses, f"held-out loss by domain (context {short})", "loss (nats/token)",
                           out / "loss_by_domain.png")
        figures.append(("loss_by_domain.png", f"Held-out loss by domain at {short} tokens, per model."))
    rates = rate_table(results)
    if rates:
        plots.grouped_bars(rates, "math exact match and passkey accuracy", "share correct", out / "accuracy.png",
                           values=True)
        figures.append(("accuracy.png", "Math exact match and passkey accuracy, per model."))
    by_length = by_context_length(results, PASSKEY)
    if by_length:
        plots.lines(by_length, "passkey retrieval by context length", "context length (tokens)", "accuracy",
                    out / "passkey_by_length.png")
        figures.append(("passkey_by_length.png", "Passkey retrieval (greedy exact match, over needle depths) by "
                                                 "context length, per base model."))
    answers = by_context_length(results, ANSWER_LOSS)
    if answers:
        plots.lines(answers, "loss of long-context task answers by context length", "context length (tokens)",
                    "answer loss (nats/token)", out / "answer_loss_by_length.png")
        figures.append(("answer_loss_by_length.png", "Loss of the answers of generated long-context tasks (passkey, "
                                                     "key-value, multi-needle, quoted passage) by context length."))
    position = {stage: {p["position"]: p["loss"] for p in ev.position}
                for stage, ev in results.evaluations.items() if ev.position}
    if position:
        plots.lines(position, "held-out loss by position on long documents", "position (tokens)", "loss",
                    out / "loss_by_position.png", log_x=False)
        figures.append(("loss_by_position.png", "Held-out loss by position in long documents, per base model: "
                                                "a model that uses far context gets better along the window."))
    for stage, ev in results.evaluations.items():
        if ev.needles and kind(stage) in ("extend", "extend_control"):
            shutil.copy(ev.needles, out / f"needles_{stage}.png")
            figures.append((f"needles_{stage}.png", f"Needle in a haystack, {stage}: retrieval (top) and answer "
                                                    "loss (bottom) by context length and needle depth."))
    return figures


# ---------------------------------------------------------------- the document


def cell(measure: str, numbers: dict, before: dict) -> str:
    """A model's number with its change from the previous model's."""
    if measure not in numbers:
        return ""
    text = f"{numbers[measure]:.3f}"
    if measure in before:
        text += f" ({signed(measure, change_of(measure, before[measure], numbers[measure]))})"
    return text


def models_table(results: Results, found: list[Verdict]) -> tuple[list[str], list[list[str]]]:
    """One row per language model, controls included: each headline number with its change from
    the previous model in the chain, and the model's verdict."""
    previous = previous_models(results)
    verdict_of = {v.stage: v.verdict for v in found}
    numbers = {stage: headline(results.evaluations[stage].metrics) for stage in previous}
    columns = [c for c in COLUMNS if any(c in n for n in numbers.values())]
    rows = []
    for stage, mine in numbers.items():
        before = headline(results.evaluations[previous[stage]].metrics) if previous[stage] else {}
        ev = results.evaluations[stage]
        name = (f"{stage} (control of {ev.control_of})" if ev.control_of else
                f"{stage} (against {ev.reference})" if ev.reference else stage)
        rows.append([name, *(cell(c, mine, before) for c in columns), verdict_of.get(stage, "")])
    return ["model", *columns, "verdict"], rows


def settings(section: dict) -> str:
    def show(value) -> str:
        if isinstance(value, list):  # extend's steps
            return "; ".join(f"{s['tokens']:,} tokens at context {s['seq_len']} with RoPE base {s['rope_base']:g}"
                             + (f" ({s['rope_scaling']} scaling)" if s.get("rope_scaling", "none") != "none" else "")
                             for s in value)
        return ", ".join(f"{k} {w:g}" for k, w in value.items()) if isinstance(value, dict) else f"{value:g}"

    return ", ".join(("in steps: {}" if isinstance(section[key], list) else text).format(show(section[key]))
                     for key, text in SETTINGS.items() if key in section)


def what_it_does(stage: str, results: Results) -> str:
    """What the stage changes, with its settings and final training loss when it trained."""
    what = [DOES[kind(stage)]] if kind(stage) in DOES else []
    training = results.training.get(stage)
    if training:
        shown = settings(training.params.get(section(stage), {}))
        what += [f"Settings: {shown}."] if shown else []
        if "final_loss" in training.metrics:
            what.append(f"Final training loss {training.metrics['final_loss']:.3f}.")
    return " ".join(what)


def stage_blocks(v: Verdict, results: Results) -> list[tuple]:
    """A model stage's section: its verdict, what it does, the verdict's sentence with the numbers."""
    what = what_it_does(v.stage, results)
    return [("stage", v.stage, v.verdict), *([("p", what)] if what else []), ("p", v.reason[0].upper() + v.reason[1:])]


def data_blocks(results: Results, figures: list[tuple[str, str]]) -> list[tuple]:
    m = results.filter
    blocks = [("h2", "Data"), ("p", f"The filter read {m['documents_in']} documents and kept {m['kept']} "
                                    f"({m['rejected']} rejected by a rule or as duplicates); it held out "
                                    f"{m['validation_documents']} for validation and mixed the rest to the domain "
                                    f"weights into {m['train_documents']} training documents.")]
    return blocks + [("figure", name, caption) for name, caption in figures if name == "funnel.png"]


def document(results: Results, found: list[Verdict], figures: list[tuple[str, str]], cfg: ReportConfig) -> list:
    """The report as blocks, rendered alike to Markdown and HTML."""
    blocks = [("h1", "Herd report"), ("p", summary_paragraph(found, cfg))]
    if results.filter:
        blocks += data_blocks(results, figures)
    header, rows = models_table(results, found)
    if rows:
        _, short = loss_table(results)
        blocks += [("h2", "Models"), ("table", header, rows),
                   ("p", f"Held-out loss: mean over domains at {short} tokens; long-document loss: at the longest "
                         "context evaluated (nats per token, lower is better; in brackets the relative change from "
                         "the model above in the chain). Rates are shares of held-out problems (higher is better; "
                         "in brackets the absolute change); the task is the post-training task's held-out problems; a "
                         "win rate is over the model a policy started from, judged by the verifier or the reward "
                         "model on the task's held-out prompts, 0.5 being a tie.")]
    blocks += sampling_blocks(results)
    blocks.append(("h2", "Verdicts by stage"))
    for v in found:
        blocks += stage_blocks(v, results)
    others = [(name, caption) for name, caption in figures if name != "funnel.png"]
    if others:
        blocks += [("h2", "Plots"), *(("figure", name, caption) for name, caption in others)]
    return blocks


def to_markdown(blocks: list) -> str:
    lines = []
    for tag, *rest in blocks:
        if tag == "h1":
            lines += [f"# {rest[0]}", ""]
        elif tag == "h2":
            lines += [f"## {rest[0]}", ""]
        elif tag == "stage":
            lines += [f"### {rest[0]}: {rest[1]}", ""]
        elif tag == "p":
            lines += [rest[0], ""]
        elif tag == "table":
            header, rows = rest
            lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
                      *("| " + " | ".join(row) + " |" for row in rows), ""]
        elif tag == "figure":
            lines += [f"![{rest[1]}]({rest[0]})", ""]
    return "\n".join(lines)


CSS = """
body { font: 15px/1.55 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 1120px;
       margin: 2em auto; padding: 0 1.2em; }
h1 { margin-bottom: .3em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
h3 { margin: 1.4em 0 .3em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #d0d0d0; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
.verdict { display: inline-block; padding: 0 .6em; border-radius: 4px; font-size: .8em; font-weight: 600;
           vertical-align: middle; }
.improved { background: #d9f2dc; color: #1d5e2a; } .worse { background: #f8d7d7; color: #7a1f1f; }
.no-effect { background: #ececec; color: #444; }
figure { margin: 1.2em 0 2em; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
"""


def _verdict_class(text: str) -> str:
    return text.replace(" ", "-")


def to_html(blocks: list, folder: Path) -> str:
    """The blocks as one HTML page that needs nothing else: each figure inlined as a data URI."""
    esc = html.escape
    body = []
    for tag, *rest in blocks:
        if tag in ("h1", "h2", "p"):
            body.append(f"<{tag}>{esc(rest[0])}</{tag}>")
        elif tag == "stage":
            badge = f'<span class="verdict {_verdict_class(rest[1])}">{esc(rest[1])}</span>'
            body.append(f"<h3>{esc(rest[0])} {badge}</h3>")
        elif tag == "table":
            header, rows = rest
            cells = [
                "".join(f'<td class="{_verdict_class(c)}">{esc(c)}</td>' if c in RANK else f"<td>{esc(c)}</td>"
                        for c in row) for row in rows]
            body.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
                        + "".join(f"<tr>{c}</tr>" for c in cells) + "</table>")
        elif tag == "figure":
            data = base64.b64encode((folder / rest[0]).read_bytes()).decode()
            body.append(f'<figure><img alt="{esc(rest[1])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(rest[1])}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Herd report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(results: Results, cfg: ReportConfig, out: Path) -> list[Path]:
    """report.md, report.html, verdicts.json and the figures, in `out`; returns the files written."""
    figures = write_plots(results, out)
    found = verdicts(results, cfg)
    blocks = document(results, found, figures, cfg)
    (out / "report.md").write_text(to_markdown(blocks))
    (out / "report.html").write_text(to_html(blocks, out))
    (out / "verdicts.json").write_text(json.dumps({v.stage: {"verdict": v.verdict, "sentence": v.sentence}
                                                   for v in found}, indent=2, ensure_ascii=False) + "\n")
    return [out / "report.md", out / "report.html", out / "verdicts.json", *(out / name for name, _ in figures)]
