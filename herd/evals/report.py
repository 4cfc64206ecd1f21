"""The evaluation report: the per-model results of the evaluation stages, in one document.

`results` maps each evaluated stage to {"metrics": its evaluation's metrics, "baseline": the
policy it was compared with, if any}."""

import re

LOSS = re.compile(r"val_loss_(\w+?)_len(\d+)$")


def loss_table(results: dict) -> tuple[dict[str, dict[str, float]], int | None]:
    """{stage: {domain: loss}} at the short context (every language model has it), and that context."""
    table, short = {}, None
    for stage, result in results.items():
        found = {}
        for key, value in result["metrics"].items():
            m = LOSS.match(key)
            if m and m.group(1) != "mean":
                found.setdefault(int(m.group(2)), {})[m.group(1)] = value
        if found:
            short = min(found)
            table[stage] = found[short]
    return table, short


def render(results: dict) -> str:
    models = {s: r["metrics"] for s, r in results.items() if "math_exact_match" in r["metrics"]}
    columns = sorted({k for m in models.values() for k in m if k.startswith("val_loss_mean") or
                      k.startswith("val_loss_long")}) + ["passkey_accuracy", "math_exact_match"]
    lines = ["# Herd evaluation", "", "Held-out measures of every model of the recipe, in the order it made them.",
             "", "| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for stage, metrics in models.items():
        lines.append(f"| {stage} | " + " | ".join(f"{metrics.get(c, float('nan')):.4f}" for c in columns) + " |")
    lines.append("")
    for stage, result in results.items():
        metrics = result["metrics"]
        if "heldout_accuracy" in metrics:
            lines.append(f"- {stage}: accuracy on {metrics['heldout_pairs']} held-out test-problem pairs "
                         f"{metrics['heldout_accuracy']:.4f}")
        if "win_rate_vs_baseline" in metrics:
            lines.append(f"- {stage}: win rate vs {result['baseline']} (judged by the reward model) "
                         f"{metrics['win_rate_vs_baseline']:.4f}")
    lines += ["", "![loss by domain](loss_by_domain.png)", ""]
    return "\n".join(lines)
