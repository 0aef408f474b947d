"""Puzzle sets: generated (cached on disk), loaded from the two common CSV layouts, augmented by symmetries, and
checked for legality in batches.

CSV layouts (chosen by the header):

* Sudoku-Extreme: columns ``question`` and ``answer``, 81 characters each, ``.`` for a blank;
* Kaggle "1 million Sudoku": columns ``quizzes`` and ``solutions``, ``0`` for a blank.

Example::

    >>> s = generate(8, givens=30, seed=0, progress=False)
    >>> s.puzzles.shape, s.subset_masks()["all"].sum()
    ((8, 81), 8)
"""

from __future__ import annotations

import csv
import hashlib
import random
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sudoku.grid import UNITS, apply_symmetry, deducible, is_legal, make_puzzle, random_symmetry, solve

#: column names of each CSV layout: (puzzle column, solution column)
LAYOUTS = {"sudoku-extreme": ("question", "answer"), "kaggle": ("quizzes", "solutions")}


@dataclass
class PuzzleSet:
    """Puzzles (n, 81) and solutions (n, 81) as int64 with 0 for a blank, and the deduction-only label (n,)."""

    puzzles: np.ndarray
    solutions: np.ndarray
    deducible: np.ndarray
    source: str = "generated"

    def __post_init__(self) -> None:
        n = len(self.puzzles)
        if self.puzzles.shape != (n, 81) or self.solutions.shape != (n, 81) or self.deducible.shape != (n,):
            raise ValueError(
                f"PuzzleSet expects puzzles and solutions of shape (n, 81) and a label of shape (n,); got "
                f"{self.puzzles.shape}, {self.solutions.shape}, {self.deducible.shape}"
            )
        known = self.puzzles != 0
        if (self.solutions[known] != self.puzzles[known]).any() or (self.solutions == 0).any():
            raise ValueError("every solution must be complete and agree with its puzzle's givens")

    def __len__(self) -> int:
        return len(self.puzzles)

    def subset_masks(self) -> dict[str, np.ndarray]:
        """Row masks of the reported subsets: ``all``, ``deducible`` (singles suffice) and ``search`` (they do not)."""
        return {"all": np.ones(len(self), dtype=bool), "deducible": self.deducible, "search": ~self.deducible}

    def digest(self) -> str:
        """SHA-256 of the puzzles and solutions: identifies the content (evaluation caches are keyed by it)."""
        h = hashlib.sha256()
        for array in (self.puzzles, self.solutions):
            h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        return h.hexdigest()

    def take(self, n: int) -> PuzzleSet:
        return PuzzleSet(self.puzzles[:n], self.solutions[:n], self.deducible[:n], self.source)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, puzzles=self.puzzles, solutions=self.solutions, deducible=self.deducible)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, *, source: str | None = None) -> PuzzleSet:
        with np.load(path) as f:
            return cls(f["puzzles"], f["solutions"], f["deducible"], source or Path(path).stem)


#: puzzles per generation chunk: chunk ``c`` of seed ``s`` is drawn from its own ``random.Random(f"{s}/{c}")``, so
#: a set is the same whatever the number of worker processes that made it
CHUNK = 200


def _chunk(job: tuple[int, int, int, int, int]) -> tuple[list[list[int]], list[list[int]], list[bool]]:
    seed, c, count, lo, hi = job
    rng = random.Random(f"{seed}/{c}")
    out: tuple[list[list[int]], list[list[int]], list[bool]] = ([], [], [])
    for _ in range(count):
        p, s = make_puzzle(rng, rng.randint(lo, hi))
        out[0].append(p)
        out[1].append(s)
        out[2].append(deducible(p))
    return out


def generate(
    n: int, *, givens: int | tuple[int, int], seed: int, progress: bool = True, workers: int | None = None
) -> PuzzleSet:
    """``n`` puzzles with a unique solution; ``givens`` is a clue count or an inclusive range drawn uniformly.

    Puzzles are made in chunks of :data:`CHUNK`, in ``workers`` processes (default: one per CPU, at most one per
    chunk); the result depends only on ``n``, ``givens`` and ``seed``.
    """
    import os
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    lo, hi = (givens, givens) if isinstance(givens, int) else givens
    jobs = [(seed, c, min(CHUNK, n - c * CHUNK), lo, hi) for c in range((n + CHUNK - 1) // CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    bar = tqdm(total=n, desc=f"puzzles ({lo}-{hi} givens)", disable=not progress, leave=False)
    parts = []
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            for part in pool.imap(_chunk, jobs):
                parts.append(part)
                bar.update(len(part[0]))
    else:
        for job in jobs:
            parts.append(_chunk(job))
            bar.update(job[2])
    bar.close()
    puzzles = [p for part in parts for p in part[0]]
    solutions = [s for part in parts for s in part[1]]
    labels = [d for part in parts for d in part[2]]
    return PuzzleSet(
        np.array(puzzles, dtype=np.int64).reshape(n, 81),
        np.array(solutions, dtype=np.int64).reshape(n, 81),
        np.array(labels, dtype=bool),
    )


def cached(path: Path, n: int, *, givens: int | tuple[int, int], seed: int, progress: bool = True) -> PuzzleSet:
    """Load ``path`` if it holds at least ``n`` puzzles, else generate them and save them there.

    A damaged cache file (e.g. truncated by a full disk) is reported and generated again.
    """
    if path.exists():
        try:
            found = PuzzleSet.load(path, source="generated")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            warnings.warn(f"{path}: damaged puzzle cache ({type(e).__name__}: {e}); generating it again", stacklevel=2)
        else:
            if len(found) >= n:
                return found.take(n)
    made = generate(n, givens=givens, seed=seed, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    made.save(path)
    return made


def _parse(text: str, blank: str, *, what: str) -> list[int]:
    text = text.strip()
    if len(text) != 81:
        raise ValueError(f"{what}: expected 81 characters, got {len(text)}: {text[:20]!r}...")
    cells = []
    for ch in text:
        if ch in (blank, ".", "0"):
            cells.append(0)
        elif ch.isdigit():
            cells.append(int(ch))
        else:
            raise ValueError(f"{what}: unexpected character {ch!r} (digits 1-9 and {blank!r} for a blank)")
    return cells


def load_csv(path: str | Path, *, limit: int | None = None) -> PuzzleSet:
    """Read a Sudoku-Extreme (question/answer, '.') or Kaggle (quizzes/solutions, '0') CSV file.

    Rows without a solution column value are solved here (and must have exactly one solution). A UTF-8 byte-order
    mark is accepted; complete grids (no blank: nothing to solve) are skipped with a warning. Every error names the
    file and the line.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return _read_csv(path, csv.DictReader(f), limit)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e}); expected a CSV file of puzzles") from e
    except csv.Error as e:
        raise ValueError(f"{path}: malformed CSV ({e})") from e


def _read_csv(path: Path, reader: csv.DictReader, limit: int | None) -> PuzzleSet:
    header = reader.fieldnames or []
    layout = next((name for name, cols in LAYOUTS.items() if cols[0] in header), None)
    if layout is None:
        raise ValueError(
            f"{path}: unknown CSV layout with columns {header}; expected 'question,answer' (Sudoku-Extreme, "
            f"'.' blanks) or 'quizzes,solutions' (Kaggle, '0' blanks)"
        )
    qcol, acol = LAYOUTS[layout]
    blank = "." if layout == "sudoku-extreme" else "0"
    puzzles, solutions, complete = [], [], []
    for row in reader:
        line = reader.line_num
        if limit is not None and len(puzzles) >= limit:
            break
        if None in row.values() or None in row:  # DictReader fills a short row with None, keeps extras under None
            fewer = "fewer" if None in row.values() else "more"
            raise ValueError(f"{path}:{line}: the row has {fewer} fields than the header's {len(header)} ({header})")
        p = _parse(row[qcol], blank, what=f"{path}:{line} {qcol}")
        if 0 not in p:
            complete.append(line)
            continue
        answer = (row.get(acol) or "").strip()
        if answer:
            s = _parse(answer, blank, what=f"{path}:{line} {acol}")
        else:
            found = solve(p, limit=2)
            if len(found) != 1:
                raise ValueError(f"{path}:{line}: no {acol} given and the puzzle has {len(found)} solutions")
            s = found[0]
        if not is_legal(s) or any(a and a != b for a, b in zip(p, s)) or 0 in s:
            raise ValueError(f"{path}:{line}: the {acol} is not a legal completion of the {qcol}")
        puzzles.append(p)
        solutions.append(s)
    if complete:
        warnings.warn(
            f"{path}: skipped {len(complete)} complete grid(s) with no blank cell, nothing to solve (line(s) "
            f"{complete[:5]}{' ...' if len(complete) > 5 else ''})",
            stacklevel=3,
        )
    if not puzzles:
        raise ValueError(f"{path}: no puzzles with a blank cell found")
    puz = np.array(puzzles, dtype=np.int64)
    return PuzzleSet(puz, np.array(solutions, dtype=np.int64), np.array([deducible(p) for p in puzzles]), layout)


def augmented_batch(pool: PuzzleSet, batch: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """A batch drawn from ``pool`` under random symmetries: solutions x0 (b, 81) and blank cells (b, 81) bool."""
    idx = rng.integers(0, len(pool), size=batch)
    perms, maps = random_symmetry(rng, batch)
    puzzles = apply_symmetry(pool.puzzles[idx], perms, maps)
    solutions = apply_symmetry(pool.solutions[idx], perms, maps)
    return torch.from_numpy(solutions), torch.from_numpy(puzzles == 0)


_UNIT_INDEX = torch.tensor(UNITS)  # (27, 9)


def legal(boards: Tensor) -> Tensor:
    """Per board (b, 81) with 0 for a blank: True when no digit repeats in a row, column or box, (b,) bool."""
    onehot = torch.nn.functional.one_hot(boards.long().clamp(0, 9), 10)[..., 1:]  # (b, 81, 9), blanks all-zero
    per_unit = onehot[:, _UNIT_INDEX.to(boards.device)].sum(2)  # (b, 27, 9) count of each digit in each unit
    return (per_unit <= 1).all(-1).all(-1)
