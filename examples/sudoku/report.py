"""The study's outputs: ``results.json`` (one row per method x threshold x subset), a printed table, and
``pareto.png`` (puzzle accuracy against mean NFE, one curve per method, +-1 std ribbons over seeds, each point
labelled with its threshold).

Example::

    >>> rows = [dict(method="mlm", threshold=0.9, subset="all", puzzles=10, accuracy=0.5, cell_accuracy=0.9,
    ...              nfe=12.0, legal_fraction=0.8)]
    >>> print(table(rows).splitlines()[0].split())
    ['method', 'threshold', 'subset', 'puzzles', 'accuracy', 'cell_acc', 'nfe', 'legal', 'cells/f']
"""

from __future__ import annotations

import json
from pathlib import Path

KEYS = ("method", "threshold", "subset", "puzzles", "accuracy", "cell_accuracy", "nfe", "legal_fraction")
#: keys added by this version: blanks committed per forward at test time; with several seeds, the spread
EXTRA = ("cells_per_forward", "accuracy_std", "nfe_std", "seeds")
STYLE = {
    "mlm": ("tab:gray", "-"),
    "rollout": ("tab:blue", "-"),
    "relay_sg": ("tab:orange", "-"),
    "relay": ("tab:red", "-"),
    "relay_sg_h0": ("tab:orange", ":"),
    "relay_h0": ("tab:red", ":"),
}


def write_json(rows: list[dict[str, object]], path: Path) -> None:
    """Rows with the documented keys in a fixed order (valid JSON: a NaN is refused, not written)."""
    tmp = path.with_suffix(".tmp")
    keep = [{k: row[k] for k in KEYS + EXTRA if k in row} for row in rows]
    tmp.write_text(json.dumps(keep, indent=1, allow_nan=False))
    tmp.replace(path)


def aggregate(per_seed: list[list[dict[str, object]]], seeds: list[int]) -> list[dict[str, object]]:
    """One row per (method, threshold, subset): the seed mean of every number, plus ``accuracy_std`` and
    ``nfe_std`` (sample standard deviation over seeds, 0 for one seed) and the list of ``seeds``."""
    import statistics

    groups: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for rows in per_seed:
        for row in rows:
            groups.setdefault((row["method"], row["threshold"], row["subset"]), []).append(row)
    out = []
    for (method, tau, subset), rows in groups.items():
        if len(rows) != len(seeds):
            raise ValueError(f"{method} at {tau} ({subset}) has {len(rows)} rows for {len(seeds)} seeds")
        row: dict[str, object] = {"method": method, "threshold": tau, "subset": subset}
        for key in KEYS[3:] + ("cells_per_forward",):
            values = [float(r[key]) for r in rows if key in r]  # type: ignore[arg-type]
            if values:
                row[key] = statistics.fmean(values) if key != "puzzles" else int(values[0])
        for key in ("accuracy", "nfe"):
            values = [float(r[key]) for r in rows]  # type: ignore[arg-type]
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["seeds"] = list(seeds)
        out.append(row)
    return out


def table(rows: list[dict[str, object]], *, subsets: tuple[str, ...] | None = None) -> str:
    """A fixed-width table: accuracy and cell accuracy in %, mean NFE, fully-legal partial boards in %, blanks
    committed per forward; with several seeds, the standard deviations of accuracy (points) and NFE."""
    spread = any("accuracy_std" in r for r in rows)
    head = f"{'method':<12} {'threshold':>9} {'subset':<10} {'puzzles':>7} {'accuracy':>8} {'cell_acc':>8} "
    head += f"{'nfe':>6} {'legal':>6} {'cells/f':>7}" + (f" {'acc_sd':>6} {'nfe_sd':>6}" if spread else "")
    lines = [head, "-" * len(head)]
    for r in rows:
        if subsets is not None and r["subset"] not in subsets:
            continue
        line = (
            f"{r['method']:<12} {r['threshold']:>9.3f} {r['subset']:<10} {r['puzzles']:>7d} "
            f"{100 * r['accuracy']:>7.1f}% {100 * r['cell_accuracy']:>7.1f}% {r['nfe']:>6.2f} "
            f"{100 * r['legal_fraction']:>5.1f}% {float(r.get('cells_per_forward', 0.0)):>7.2f}"
        )
        if spread:
            line += f" {100 * float(r.get('accuracy_std', 0.0)):>6.1f} {float(r.get('nfe_std', 0.0)):>6.2f}"
        lines.append(line)
    return "\n".join(lines)


def pareto(rows: list[dict[str, object]], path: Path, *, title: str = "", subset: str = "all") -> None:
    """Accuracy (%) against mean NFE on ``subset``, one curve per method (ablations dotted), each point labelled
    with its threshold; with several seeds, +-1 std ribbons in accuracy and NFE error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=120)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    top = max([100 * float(r["accuracy"]) + 100 * float(r.get("accuracy_std", 0.0)) for r in rows] + [1.0])
    for method in methods:
        pts = sorted(
            (
                float(r["nfe"]),
                100 * float(r["accuracy"]),
                100 * float(r.get("accuracy_std", 0.0)),
                float(r.get("nfe_std", 0.0)),
                float(r["threshold"]),
            )
            for r in rows
            if r["method"] == method and r["subset"] == subset
        )
        if not pts:
            continue
        color, style = STYLE.get(str(method), (None, "-"))
        x, y, sd, xsd = ([p[i] for p in pts] for i in range(4))
        line = ax.plot(x, y, style, marker="o", ms=4, color=color, label=method)[0]
        if any(sd) or any(xsd):
            ax.fill_between(
                x,
                [a - b for a, b in zip(y, sd)],
                [a + b for a, b in zip(y, sd)],
                color=line.get_color(),
                alpha=0.15,
                linewidth=0,
            )
            ax.errorbar(x, y, xerr=xsd, fmt="none", ecolor=line.get_color(), alpha=0.5, linewidth=0.8)
        if style == "-":  # the dotted h-zeroed curves stay unlabelled to keep the plot readable
            for px, py, *_, tau in pts:
                ax.annotate(
                    f"{tau:g}", (px, py), textcoords="offset points", xytext=(3, 3), fontsize=6, color=line.get_color()
                )
    ax.set_ylim(0, min(100.0, top * 1.1 + 1))
    ax.set_xlabel("mean NFE per puzzle (forward passes)")
    ax.set_ylabel("puzzles solved (%)")
    ax.set_title(title or "Sudoku: accuracy vs NFE (threshold sweep)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
