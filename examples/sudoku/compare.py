"""Comparisons that fit the question "is relay ahead?": accuracy at matched NFE and NFE at matched accuracy,
interpolated along each method's threshold curve, with a paired bootstrap interval over puzzles (and the mean over
training seeds).

Each method's threshold sweep gives a curve of (mean NFE, accuracy) points. Against a reference method R at one of
its thresholds t (NFE n_R, accuracy a_R):

* ``gap``: the method's accuracy interpolated at NFE n_R, minus a_R (percentage points; > 0: ahead at equal cost);
* ``ratio``: the NFE at which the method's curve first reaches accuracy a_R (interpolated), divided by n_R (< 1:
  as accurate for fewer passes);
* ``gap_06``: the method's accuracy at 0.6 n_R minus a_R (the issue's goal: >= 0 with the interval clear of zero).

Nothing is extrapolated: a target outside the method's curve is ``None``. The interval resamples the puzzles of
every seed with replacement (the same draw for both methods, so the comparison is paired), recomputes both curves
and the gap, averages over seeds, and takes the 2.5 and 97.5 percentiles.

Legend: T thresholds, N puzzles, S seeds, B bootstrap draws.

Example::

    >>> import numpy as np
    >>> solved = np.array([[0, 0, 1, 1], [1, 1, 1, 1]], bool)        # (T, N): 2 thresholds, 4 puzzles
    >>> nfe = np.array([[4, 4, 4, 4], [8, 8, 8, 8]])
    >>> round(float(at(6.0, curve(solved, nfe)[1], curve(solved, nfe)[0])), 2)   # accuracy at NFE 6
    0.75
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Outcome = dict[str, np.ndarray]  # {"solved": (T, N) bool, "nfe": (T, N) int}


def curve(solved: np.ndarray, nfe: np.ndarray, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy (T,), mean NFE (T,)) over the puzzles ``idx`` (all when None)."""
    if idx is not None:
        solved, nfe = solved[:, idx], nfe[:, idx]
    return solved.mean(1), nfe.mean(1)


def at(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """y interpolated linearly at ``x`` along the points (xs, ys) sorted by xs; NaN outside their range."""
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    if not xs[0] - 1e-9 <= x <= xs[-1] + 1e-9:
        return math.nan
    return float(np.interp(x, xs, ys))


def first_at(target: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """The smallest x at which the curve (points sorted by x) first reaches ``y = target``, interpolated linearly on
    the first segment that crosses it; NaN when no point reaches it or the first point already exceeds it.

    Accuracy is not monotone along a threshold sweep (a stricter threshold can solve fewer puzzles), so the NFE
    needed for an accuracy is read at the first crossing, not by sorting the points by accuracy.
    """
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    if abs(ys[0] - target) <= 1e-12:
        return float(xs[0])
    for i in range(len(xs) - 1):
        if ys[i] < target <= ys[i + 1]:
            return float(xs[i] + (target - ys[i]) / (ys[i + 1] - ys[i]) * (xs[i + 1] - xs[i]))
    return math.nan


def _stats(method: list[Outcome], ref: list[Outcome], t: int, idx: list[np.ndarray] | None) -> np.ndarray:
    """(gap, ratio, gap_06) averaged over seeds, for the reference's threshold index ``t``."""
    out = []
    for s, (m, r) in enumerate(zip(method, ref)):
        i = None if idx is None else idx[s]
        acc_m, nfe_m = curve(m["solved"], m["nfe"], i)
        acc_r, nfe_r = curve(r["solved"], r["nfe"], i)
        gap = at(nfe_r[t], nfe_m, acc_m) - acc_r[t]
        ratio = first_at(acc_r[t], nfe_m, acc_m) / nfe_r[t]
        gap06 = at(0.6 * nfe_r[t], nfe_m, acc_m) - acc_r[t]
        out.append((gap, ratio, gap06))
    return np.mean(np.array(out), axis=0)  # NaN when any seed is out of range


def compare(
    method: list[Outcome],
    ref: list[Outcome],
    thresholds: tuple[float, ...],
    *,
    draws: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One dict per reference threshold: gap, ratio, gap_06 (seed means) and their 95% bootstrap intervals.

    ``method`` and ``ref`` hold one outcome per seed (the same puzzles for both within a seed).
    """
    if len(method) != len(ref) or not method:
        raise ValueError(f"compare expects one outcome per seed for both methods, got {len(method)} and {len(ref)}")
    rng = np.random.default_rng(seed)
    sizes = [m["solved"].shape[1] for m in method]
    samples = [[rng.integers(0, n, size=n) for n in sizes] for _ in range(draws)]
    rows = []
    for t, tau in enumerate(thresholds):
        point = _stats(method, ref, t, None)
        boot = np.array([_stats(method, ref, t, idx) for idx in samples])  # (B, 3)
        row: dict[str, Any] = {"ref_threshold": float(tau)}
        for j, name in enumerate(("gap", "ratio", "gap_06")):
            finite = boot[:, j][np.isfinite(boot[:, j])]
            ok = math.isfinite(point[j]) and len(finite) >= 0.95 * draws
            row[name] = float(point[j]) if math.isfinite(point[j]) else None
            row[f"{name}_lo"] = float(np.percentile(finite, 2.5)) if ok else None
            row[f"{name}_hi"] = float(np.percentile(finite, 97.5)) if ok else None
        rows.append(row)
    return rows


def fmt(
    value: float | None, lo: float | None, hi: float | None, *, scale: float = 100.0, digits: int = 1, sign: bool = True
) -> str:
    """``+3.5 [-1.0, +8.0]`` (points by default); ``n/a`` when the target is outside the curve."""
    if value is None:
        return "n/a"
    spec = f"{'+' if sign else ''}.{digits}f"
    text = f"{scale * value:{spec}}"
    if lo is not None and hi is not None:
        text += f" [{scale * lo:{spec}}, {scale * hi:{spec}}]"
    return text
