"""PNG figures for reports: headless (Agg) so they render on servers and in CI."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def funnel_plot(steps: list[tuple[str, int]], path: Path) -> None:
    """Documents left after each filtering step."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names, counts = zip(*steps, strict=True)
    ax.barh(names[::-1], counts[::-1], color="#4c72b0")
    for i, c in enumerate(counts[::-1]):
        ax.text(c, i, f" {c}", va="center", fontsize=8)
    ax.set_xlabel("documents")
    ax.set_title("filter funnel")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grouped_bars(table: dict[str, dict[str, float]], title: str, ylabel: str, path: Path) -> None:
    """One group of bars per row of `table` (e.g. stage -> {domain: loss})."""
    rows = list(table)
    cols = sorted({c for r in rows for c in table[r]})
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.4))
    width = 0.8 / max(1, len(cols))
    for j, col in enumerate(cols):
        xs = [i + j * width for i in range(len(rows))]
        ax.bar(xs, [table[r].get(col, float("nan")) for r in rows], width, label=col)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], rows)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
