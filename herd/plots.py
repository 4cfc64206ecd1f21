"""PNG figures for reports: headless (Agg) so they render on servers and in CI."""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FILTER_COLOR, MIX_COLOR = "#4c72b0", "#dd8452"


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight": legends placed outside the axes stay in
    plt.close(fig)


def funnel_plot(funnel: dict, path: Path) -> None:
    """What the filter did (funnel.json of the filter stage), in three panels: the documents left
    after each step with what the step removed, the split and the mix last; the documents each
    rule rejected; and each domain's share of characters before and after the mix beside its
    weight, which shows why the mix dropped (or repeated) documents."""
    fig, (steps_ax, rules_ax, mix_ax) = plt.subplots(1, 3, figsize=(15, 4.6), width_ratios=(1.3, 1, 1))
    _funnel_steps(steps_ax, funnel["documents"])
    _rejected_by_rule(rules_ax, funnel["rejected"])
    _mix_shares(mix_ax, funnel["mix"])
    _save(fig, path)


def _funnel_steps(ax, documents: dict[str, int]) -> None:
    names, counts = list(documents), list(documents.values())
    colors = [MIX_COLOR if name == "mix" else FILTER_COLOR for name in names]
    ax.barh(names[::-1], counts[::-1], color=colors[::-1])
    for i, (count, before) in enumerate(zip(counts, [counts[0], *counts[:-1]], strict=True)):
        change = f" ({count - before:+d})" if i else ""
        ax.text(count, len(names) - 1 - i, f" {count}{change}", va="center", fontsize=8)
    ax.set_xlim(0, max(counts) * 1.35)  # room for the labels
    ax.set_xlabel("documents left (change)")
    ax.set_title("filter funnel: each step, then the split and the mix", fontsize=10)


def _rejected_by_rule(ax, rejected: dict[str, int], top: int = 12) -> None:
    ranked = sorted(rejected.items(), key=lambda kv: -kv[1])
    shown = ranked[:top] + ([("other rules", sum(c for _, c in ranked[top:]))] if len(ranked) > top else [])
    if not shown:
        ax.text(0.5, 0.5, "no document rejected", ha="center", va="center", transform=ax.transAxes)
    else:
        names, counts = zip(*shown, strict=True)
        ax.barh(names[::-1], counts[::-1], color=FILTER_COLOR)
        for i, c in enumerate(counts[::-1]):
            ax.text(c, i, f" {c}", va="center", fontsize=7)
        ax.set_xlim(0, max(counts) * 1.2)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("documents")
    ax.set_title("rejected, by rule", fontsize=10)


def _mix_shares(ax, mix: dict[str, dict[str, float]]) -> None:
    domains = list(mix)
    bars = (("before", "kept, before the mix", "#8c8c8c"), ("after", "in the training mix", MIX_COLOR),
            ("weight", "weight (target)", "#55a868"))
    height = 0.8 / len(bars)
    for j, (key, label, color) in enumerate(bars):
        ys = [len(domains) - 1 - i + (1 - j) * height for i in range(len(domains))]
        ax.barh(ys, [mix[d][key] for d in domains], height, label=label, color=color)
    ax.set_yticks(range(len(domains)), domains[::-1])
    ax.set_xlabel("share of characters")
    ax.set_title("the mix: domain shares against the weights", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)


def grouped_bars(table: dict[str, dict[str, float]], title: str, ylabel: str, path: Path,
                 values: bool = False) -> None:
    """One group of bars per row of `table` (e.g. stage -> {domain: loss}); `values` writes each
    bar's value on it (a rate of 0 is otherwise an invisible bar)."""
    rows = list(table)
    cols = sorted({c for r in rows for c in table[r]})
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 + 1.1 * len(rows)), 3.4))
    width = 0.8 / max(1, len(cols))
    for j, col in enumerate(cols):
        xs = [i + j * width for i in range(len(rows))]
        bars = ax.bar(xs, [table[r].get(col, float("nan")) for r in rows], width, label=col)
        if values:
            ax.bar_label(bars, fmt="%.3f", fontsize=6)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], rows)
    ax.set_ylim(bottom=0)  # losses and rates: an axis of all-zero rates would otherwise go negative
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, path)


def curve_panels(curves: dict[str, list[dict]], column: str, ylabel: str, title: str, path: Path,
                 x: str = "step") -> None:
    """`column` by `x` (the step), one panel per stage: the stages' losses differ in kind and scale
    (language modelling, Bradley-Terry, DPO), so shared axes would flatten most of them."""
    ncols = min(3, len(curves))
    nrows = math.ceil(len(curves) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.7 * nrows), squeeze=False)
    for ax, (stage, rows) in zip(axes.flat, curves.items(), strict=False):  # spare panels stay empty
        ax.plot([r[x] for r in rows], [r[column] for r in rows], color=FILTER_COLOR, linewidth=1.2)
        ax.set_title(stage, fontsize=10)
        ax.set_xlabel(x, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    for ax in axes.flat[len(curves):]:
        ax.axis("off")
    fig.suptitle(title)
    _save(fig, path)


def lines(table: dict[str, dict[int, float]], title: str, xlabel: str, ylabel: str, path: Path,
          log_x: bool = True) -> None:
    """One line per row of `table` (e.g. stage -> {context length: accuracy}); context lengths
    double, so the x axis is in powers of two unless `log_x` is off."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, points in table.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", markersize=3, label=name)
    if log_x:
        ax.set_xscale("log", base=2)
        ticks = sorted({x for points in table.values() for x in points})
        ax.set_xticks(ticks, [str(x) for x in ticks])  # 512, not 2^9
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save(fig, path)


def needle_heatmaps(rows: list[dict], title: str, path: Path) -> None:
    """Needle in a haystack: per task kind, retrieval accuracy (top) and the loss of the answer
    (bottom) by context length (x) and needle depth (y); rows as herd/evals/long_context.py's."""
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    fig, axes = plt.subplots(2, len(kinds), figsize=(3.3 * len(kinds), 5.6), squeeze=False)
    top = max(r["answer_loss"] for r in rows)
    for j, kind in enumerate(kinds):
        cells = {(r["length"], r["depth"]): r for r in rows if r["kind"] == kind}
        for i, (measure, cmap, vmax) in enumerate((("accuracy", "RdYlGn", 1.0), ("answer_loss", "viridis_r", top))):
            ax = axes[i, j]
            grid = [[cells[(n, d)][measure] if (n, d) in cells else float("nan") for n in lengths] for d in depths]
            image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=vmax, aspect="auto")
            for y, line in enumerate(grid):
                for x, value in enumerate(line):
                    ax.text(x, y, "n/a" if value != value else f"{value:.2f}", ha="center", va="center", fontsize=6)
            ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
            ax.set_title(f"{kind}: {measure.replace('_', ' ')}", fontsize=9)
            ax.set_xlabel("context length", fontsize=7)
            ax.set_ylabel("needle depth", fontsize=7)
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
