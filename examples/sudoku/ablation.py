"""The ablation table of the Sudoku study: one row per finished run folder (one factor changed, or several).

    python examples/sudoku/ablation.py baseline=runs/q0 "update=all"=runs/q-all "empty=zero"=runs/q-zero

For the ``relay`` model of each folder (``--method`` to change it): accuracy / mean NFE at two thresholds on the
evaluation puzzles and on the validation puzzles (choose on ``val``, report ``eval``), the accuracy gap at matched
NFE to MLM and to Rollout at their points for the same two thresholds, with the 95% bootstrap interval, the h-zeroed gap
(relay minus the same model with h = 0, in points) and the blanks committed per forward in training (K-step phase)
and at test (at the first threshold). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sudoku.compare import fmt  # noqa: E402


def _row(rows: list[dict], method: str, tau: float, subset: str) -> dict | None:
    return next(
        (r for r in rows if r["method"] == method and abs(r["threshold"] - tau) < 1e-9 and r["subset"] == subset),
        None,
    )


def _accnfe(r: dict | None) -> str:
    if r is None:
        return "n/a"
    text = f"{100 * r['accuracy']:.1f} / {r['nfe']:.1f}"
    if r.get("accuracy_std") is not None and len(r.get("seeds", [])) > 1:
        text += f" (±{100 * r['accuracy_std']:.1f})"
    return text


def line(label: str, folder: Path, method: str, taus: tuple[float, float]) -> str:
    rows = json.loads((folder / "results.json").read_text())
    compared = json.loads((folder / "comparisons.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    cells = [
        s[method]["train_cells_per_forward"]
        for s in summary["seeds"]
        if method in s and s[method]["train_cells_per_forward"] is not None
    ]
    parts = [label]
    parts += [_accnfe(_row(rows, method, t, "all")) for t in taus]
    parts += [_accnfe(_row(rows, method, t, "val")) for t in taus]
    for ref in ("mlm", "rollout"):
        cell = []
        for t in taus:
            c = next(
                (
                    c
                    for c in compared
                    if c["method"] == method
                    and c["ref"] == ref
                    and c["set"] == "eval"
                    and abs(c["ref_threshold"] - t) < 1e-9
                ),
                None,
            )
            cell.append("n/a" if c is None else fmt(c["gap"], c["gap_lo"], c["gap_hi"]))
        parts.append("; ".join(cell))
    zeroed = []
    for t in taus:
        a, b = _row(rows, method, t, "all"), _row(rows, f"{method}_h0", t, "all")
        zeroed.append("n/a" if a is None or b is None else f"{100 * (a['accuracy'] - b['accuracy']):+.1f}")
    parts.append(" / ".join(zeroed))
    test = _row(rows, method, taus[0], "all")
    train = f"{sum(cells) / len(cells):.1f}" if cells else "n/a"
    parts.append(f"{train} / {test['cells_per_forward']:.1f}" if test and "cells_per_forward" in test else "n/a")
    return "| " + " | ".join(parts) + " |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=FOLDER")
    p.add_argument("--method", default="relay")
    p.add_argument("--taus", default="0.85,0.95", help="two thresholds for the accuracy / NFE columns")
    args = p.parse_args(argv)
    taus = tuple(float(v) for v in args.taus.split(","))
    if len(taus) != 2:
        raise SystemExit(f"--taus expects two thresholds, got {args.taus!r}")
    t0, t1 = (f"{t:g}" for t in taus)
    print(
        f"| factor | eval acc / NFE at {t0} | at {t1} | val acc / NFE at {t0} | val at {t1} | "
        f"acc gap to MLM at equal NFE (pts, at MLM's {t0}; {t1}) | to Rollout ({t0}; {t1}) | "
        f"h-zeroed gap at {t0} / {t1} | "
        f"cells per forward: train / test at {t0} |"
    )
    print("|" + "---|" * 9)
    for item in args.runs:
        label, sep, folder = item.rpartition("=")
        if not sep:
            raise SystemExit(f"expected LABEL=FOLDER, got {item!r}")
        print(line(label, Path(folder), args.method, taus))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
