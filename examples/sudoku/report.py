"""The study's outputs: ``results.json`` (one row per method x threshold x subset), a printed table, and
``pareto.png`` (puzzle accuracy against mean NFE, one curve per method).

Example::

    >>> rows = [dict(method="mlm", threshold=0.9, subset="all", puzzles=10, accuracy=0.5, cell_accuracy=0.9,
    ...              nfe=12.0, legal_fraction=0.8)]
    >>> print(table(rows).splitlines()[0].split())
    ['method', 'threshold', 'subset', 'puzzles', 'accuracy', 'cell_acc', 'nfe', 'legal']
"""

from __future__ import annotations

import json
from pathlib import Path

KEYS = ("method", "threshold", "subset", "puzzles", "accuracy", "cell_accuracy", "nfe", "legal_fraction")
STYLE = {
    "mlm": ("tab:gray", "-"),
    "rollout": ("tab:blue", "-"),
    "relay_sg": ("tab:orange", "-"),
    "relay": ("tab:red", "-"),
    "relay_sg_h0": ("tab:orange", ":"),
    "relay_h0": ("tab:red", ":"),
}


def write_json(rows: list[dict[str, object]], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{k: row[k] for k in KEYS} for row in rows], indent=1))
    tmp.replace(path)


def table(rows: list[dict[str, object]], *, subsets: tuple[str, ...] | None = None) -> str:
    """A fixed-width table: accuracy and cell accuracy in %, mean NFE, fully-legal partial boards in %."""
    head = f"{'method':<12} {'threshold':>9} {'subset':<10} {'puzzles':>7} {'accuracy':>8} {'cell_acc':>8} "
    head += f"{'nfe':>6} {'legal':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if subsets is not None and r["subset"] not in subsets:
            continue
        lines.append(
            f"{r['method']:<12} {r['threshold']:>9.3f} {r['subset']:<10} {r['puzzles']:>7d} "
            f"{100 * r['accuracy']:>7.1f}% {100 * r['cell_accuracy']:>7.1f}% {r['nfe']:>6.2f} "
            f"{100 * r['legal_fraction']:>5.1f}%"
        )
    return "\n".join(lines)


def pareto(rows: list[dict[str, object]], path: Path, *, title: str = "") -> None:
    """Accuracy (%) against mean NFE on the ``all`` subset, one curve per method (ablations dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    top = max([100 * float(r["accuracy"]) for r in rows if r["subset"] == "all"] + [1.0])
    for method in methods:
        pts = sorted((r["nfe"], 100 * r["accuracy"]) for r in rows if r["method"] == method and r["subset"] == "all")
        if not pts:
            continue
        color, style = STYLE.get(str(method), (None, "-"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=4, color=color, label=method)
    ax.set_ylim(0, min(100.0, top * 1.1 + 1))
    ax.set_xlabel("mean NFE per puzzle (forward passes)")
    ax.set_ylabel("puzzles solved (%)")
    ax.set_title(title or "Sudoku: accuracy vs NFE (threshold sweep)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
