"""The report on synthetic stage outputs: verdicts per stage (better is lower for a loss, higher for
a rate; a change within the noise band is no effect; a control can take a gain away), a
self-contained HTML page with every plot inlined, a Markdown table with the changes."""

import base64
import csv
import json
import re
from collections import Counter
from types import SimpleNamespace

import pytest

from herd.config import ParamError
from herd.evals.report import (
    IMPROVED,
    NO_EFFECT,
    WORSE,
    Change,
    ReportConfig,
    Results,
    Training,
    gather,
    sampling_blocks,
    summary,
    verdicts,
    write_report,
)
from herd.plots import funnel_plot
from tasks.filter import funnel

CFG = ReportConfig(loss_noise=0.01, rate_noise=0.05)


def lm(loss: float, long: float, math: float, passkey: float = 0.0, **extra) -> dict:
    """An evaluation's metrics: held-out losses at 256 tokens, long documents at 1024, the rates."""
    return {"val_loss_code_len256": loss + 0.5, "val_loss_math_len256": loss - 0.5, "val_loss_mean_len256": loss,
            "val_loss_long_len1024": long, "retrieval_passkey_len1024": passkey, "math_exact_match": math,
            "wall_time_s": 3.0, **extra}


def write_stage(root, name: str, metrics: dict, curve: bool = False, **manifest):
    folder = root / name
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "manifest.json").write_text(json.dumps({"stage": name, "params": {}, **manifest}))
    if curve:
        with open(folder / "curve.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["step", "loss", "lr"])
            writer.writerows([step, 5.0 / (1 + step), 1e-3 * min(1, (step + 1) / 20)] for step in range(0, 60, 10))
    return folder


FUNNEL = {"documents": {"input": 100, "heuristics": 80, "quality": 80, "decontamination": 78, "exact_dedup": 70,
                        "near_dedup": 66, "validation_split": 60, "mix": 40},
          "rejected": {"too_few_words": 20, "contaminated": 2, "exact_duplicate": 8, "near_duplicate": 4},
          "mix": {"code": {"before": 0.5, "after": 0.3, "weight": 0.3},
                  "prose": {"before": 0.5, "after": 0.7, "weight": 0.7}}}


def write_filter(root):
    folder = write_stage(root, "filter", {"documents_in": 100, "kept": 66, "rejected": 34,
                                          "validation_documents": 6, "train_documents": 40})
    funnel_plot(FUNNEL, folder / "funnel.png")
    return folder


@pytest.fixture
def stages(tmp_path):
    """The report's inputs in recipe order: filter, training stages with their curves, evaluations.
    Against the previous model: extend moves nothing beyond noise, anneal gains, sft loses on the task,
    dpo keeps its task exact match and wins over sft; pretrain beats a unigram model, reward beats chance."""
    root = tmp_path / "artifacts"
    root.mkdir()
    folders = {"filter": write_filter(root)}
    training = {"pretrain": {"final_loss": 3.5, "unigram_entropy": 6.5}, "extend": {}, "anneal": {}, "reward": {},
                "sft": {}, "dpo": {}}
    for name, metrics in training.items():
        folders[name] = write_stage(root, name, metrics, curve=True)
    evals = {"pretrain": (lm(4.0, 4.68, 0.05), {}), "extend": (lm(3.9, 4.67, 0.05), {}),
             "anneal": (lm(3.7, 4.8, 0.30, task_exact_match=0.3), {}),
             "reward": ({"heldout_accuracy": 0.8, "heldout_pairs": 200}, {}),
             "sft": (lm(4.2, 5.0, 0.20, task_exact_match=0.2), {}),
             "dpo": (lm(4.2, 5.0, 0.22, task_exact_match=0.22, win_rate_verifier=0.7, win_rate_reward=0.6),
                     {"baseline": "sft"})}
    for model, (metrics, manifest) in evals.items():
        folders[f"eval_{model}"] = write_stage(root, f"eval_{model}", metrics, evaluates=model, **manifest)
    return folders


def test_a_loss_is_better_lower_and_a_rate_higher_beyond_the_noise_band():
    assert Change("held-out loss", 4.0, 3.8, 0.01).verdict == IMPROVED
    assert Change("held-out loss", 4.0, 4.2, 0.01).verdict == WORSE
    assert Change("held-out loss", 4.68, 4.67, 0.01).verdict == NO_EFFECT  # −0.2%, within 1%
    assert Change("math exact match", 0.10, 0.30, 0.05).verdict == IMPROVED
    assert Change("math exact match", 0.30, 0.10, 0.05).verdict == WORSE
    assert Change("math exact match", 0.10, 0.15, 0.05).verdict == NO_EFFECT  # exactly the band is within it
    assert Change("long-document loss", 4.68, 4.67, 0.01).describe() == \
        "long-document loss 4.680 → 4.670 (−0.2%, within the 1% noise band)"


def test_each_stage_is_judged_against_the_model_before_it(stages):
    found = {v.stage: v for v in verdicts(gather(stages), CFG)}
    assert {s: v.verdict for s, v in found.items()} == {
        "pretrain": IMPROVED, "extend": NO_EFFECT, "anneal": IMPROVED, "reward": IMPROVED, "sft": WORSE,
        "dpo": IMPROVED}
    assert found["pretrain"].sentence.startswith("pretrain: improved — against a unigram model")
    assert found["extend"].sentence == (
        "extend: no effect — against pretrain, long-document loss 4.680 → 4.670 (−0.2%, within the 1% noise band)"
        " and passkey accuracy 0.000 → 0.000 (+0.000, within the ±0.05 noise band).")
    assert "reward accuracy 0.500 → 0.800 (+0.300, better)" in found["reward"].sentence  # against chance
    # sft is for the post-training task: its higher pretraining loss does not count, its task exact match does.
    assert found["sft"].sentence == \
        "sft: worse — against anneal, task exact match 0.300 → 0.200 (−0.100, worse)."
    assert "win rate (verifier) 0.500 → 0.700 (+0.200, better)" in found["dpo"].sentence  # a tie with sft is 0.5
    assert "win rate (reward) 0.500 → 0.600 (+0.100, better)" in found["dpo"].sentence


def test_a_gain_its_control_shows_too_is_no_effect(stages, tmp_path):
    control = write_stage(tmp_path / "artifacts", "eval_anneal_control", lm(3.69, 4.8, 0.29),
                          evaluates="anneal_control", control_of="anneal")
    folders = dict(stages)
    folders["eval_anneal_control"] = control
    found = {v.stage: v for v in verdicts(gather(folders), CFG)}
    assert "anneal_control" not in found
    assert found["anneal"].verdict == NO_EFFECT
    assert [c.verdict for c in found["anneal"].comparisons] == [IMPROVED, NO_EFFECT]
    assert "against its control anneal_control, math loss 3.190 → 3.200 (+0.3%" in found["anneal"].sentence
    out = tmp_path / "report"
    out.mkdir()
    write_report(gather(folders), CFG, out)
    assert "| anneal_control (control of anneal) | 3.690 (−5.4%) | 3.190 (−6.2%) |" in (out / "report.md").read_text()


def test_dpo_that_its_nll_only_control_beats_is_worse(stages, tmp_path):
    """DPO gains on sft, but the same run without the preference term gains more: the report says
    the preference term made things worse."""
    folders = dict(stages)
    folders["eval_dpo_control"] = write_stage(
        tmp_path / "artifacts", "eval_dpo_control",
        lm(4.2, 5.0, 0.3, task_exact_match=0.3, win_rate_verifier=0.8, win_rate_reward=0.6),
        evaluates="dpo_control", control_of="dpo", baseline="sft")
    found = {v.stage: v for v in verdicts(gather(folders), CFG)}
    assert "dpo_control" not in found and found["dpo"].verdict == WORSE
    assert "against its control dpo_control, task exact match 0.300 → 0.220 (−0.080, worse)" in found["dpo"].sentence


def test_a_probe_is_judged_against_the_anneal_control_not_the_chain(stages, tmp_path):
    folders = dict(stages)
    folders["eval_anneal_control"] = write_stage(tmp_path / "artifacts", "eval_anneal_control", lm(3.8, 4.8, 0.1),
                                                 evaluates="anneal_control", control_of="anneal")
    folders["eval_anneal_probe_gsm"] = write_stage(tmp_path / "artifacts", "eval_anneal_probe_gsm", lm(3.6, 4.8, 0.3),
                                                   evaluates="anneal_probe_gsm", reference="anneal_control")
    found = {v.stage: v for v in verdicts(gather(folders), CFG)}
    assert found["anneal_probe_gsm"].verdict == IMPROVED
    assert found["anneal_probe_gsm"].sentence.startswith(
        "anneal_probe_gsm: improved — against anneal_control, math loss 3.300 → 3.100 (−6.1%, better)")
    assert found["sft"].comparisons[0].reference == "anneal"  # the probe is no link of the chain


def test_the_html_is_self_contained_with_every_plot_inlined(stages, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    written = write_report(gather(stages), CFG, out)
    page = (out / "report.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy.png", "funnel.png", "learning_rate.png", "loss_by_domain.png", "loss_curves.png"]
    assert {p.name for p in written} == {*pngs, "report.md", "report.html", "verdicts.json"}
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(sources) == len(pngs)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
    for stage in ("pretrain", "extend", "anneal", "reward", "sft", "dpo"):
        assert f"<h3>{stage} <span" in page


def test_the_markdown_table_shows_each_change_from_the_previous_model(stages, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    write_report(gather(stages), CFG, out)
    md = (out / "report.md").read_text()
    assert ("| model | held-out loss | math loss | long-document loss | passkey accuracy | math exact match "
            "| task exact match | win rate (verifier) | win rate (reward) | verdict |") in md
    assert "| pretrain | 4.000 | 3.500 | 4.680 | 0.000 | 0.050 |  |  |  | improved |" in md
    assert ("| extend | 3.900 (−2.5%) | 3.400 (−2.9%) | 4.670 (−0.2%) | 0.000 (+0.000) | 0.050 (+0.000) |  |  |  "
            "| no effect |") in md
    assert ("| anneal | 3.700 (−5.1%) | 3.200 (−5.9%) | 4.800 (+2.8%) | 0.000 (+0.000) | 0.300 (+0.250) | 0.300 "
            "|  |  | improved |") in md
    assert "| dpo | 4.200 (+0.0%) |" in md and "| 0.220 (+0.020) | 0.700 | 0.600 | improved |" in md
    for png in out.glob("*.png"):
        assert f"]({png.name})" in md
    assert summary(out).splitlines()[1].startswith("extend: no effect — against pretrain")


def test_retrieval_by_length_is_plotted_only_when_measured(stages, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    write_report(gather(stages), CFG, out)
    assert not (out / "passkey_by_length.png").exists()
    metrics_file = stages["eval_extend"] / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "retrieval_passkey_len512": 0.5, "answer_loss_len512": 3.0,
                                        "answer_loss_len1024": 3.5}))
    with open(stages["eval_extend"] / "position.csv", "w") as fh:
        fh.write("position,loss\n256,4.5\n512,4.2\n")
    write_report(gather(stages), CFG, out)
    for png in ("passkey_by_length.png", "answer_loss_by_length.png", "loss_by_position.png"):
        assert (out / png).exists()
        assert f"]({png})" in (out / "report.md").read_text()
    assert (out / "report.html").read_text().count("<img ") == 8


def test_noise_bands_must_be_shares():
    for bad in ({"loss_noise": -0.01}, {"rate_noise": 1.5}, {"loss_noise": float("nan")}):
        with pytest.raises(ParamError):
            ReportConfig(**bad).check(None)
    ReportConfig().check(None)


def test_funnel_counts_the_split_and_the_mix_and_the_domain_shares():
    filt = SimpleNamespace(
        funnel={"input": 10, "heuristics": 8, "quality": 8, "decontamination": 8, "exact_dedup": 7, "near_dedup": 6},
        reasons=Counter({"too_few_words": 2, "exact_duplicate": 1, "near_duplicate": 1}),
        kept_meta=[{"id": f"d{i}", "domain": "code" if i < 4 else "prose", "chars": 100} for i in range(6)])
    metrics = {"kept": 6, "validation_documents": 0, "train_documents": 3, "mix_share_code": 0.34,
               "mix_share_prose": 0.66}
    steps = funnel(filt, metrics, {"code": 0.3, "prose": 0.7}, validation_frac=0.0)
    assert list(steps["documents"].items())[-2:] == [("validation_split", 6), ("mix", 3)]
    assert steps["rejected"] == {"too_few_words": 2, "exact_duplicate": 1, "near_duplicate": 1}
    assert steps["mix"]["code"] == {"before": round(4 / 6, 4), "after": 0.34, "weight": 0.3}


def test_each_sampling_row_shows_what_its_samples_feed():
    metrics = {"random_correct_rate": 0.4, "best_of_k_verifier_correct_rate": 0.9, "sft_examples": 500,
               "dpo_pairs": 800}
    results = Results(training={name: Training(dict(metrics), {}, []) for name in
                                ("rejection_sample", "dpo_pairs", "rejection_sample_r2", "dpo_pairs_r2")})
    (_, title), (_, header, rows), _ = sampling_blocks(results)
    cells = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert title == "Rejection sampling" and list(cells) == list(results.training)
    for stage in ("rejection_sample", "rejection_sample_r2"):  # SFT's data
        assert cells[stage]["SFT examples"] == "500" and cells[stage]["DPO pairs"] == ""
    for stage in ("dpo_pairs", "dpo_pairs_r2"):  # DPO's
        assert cells[stage]["DPO pairs"] == "800" and cells[stage]["SFT examples"] == ""
    assert cells["dpo_pairs"]["best of K by verifier"] == "0.9"
