"""Sudoku grids in pure Python: a bitmask solver that counts solutions, a generator of unique puzzles, a
deduction-only solver (the difficulty label), legality checks and the symmetries that keep a puzzle valid.

A board is 81 ints in row-major order, 0 for a blank and 1..9 for a digit.

Example::

    >>> rng = random.Random(0)
    >>> puzzle, solution = make_puzzle(rng, givens=30)
    >>> len(solve(puzzle, limit=2))                  # exactly one solution
    1
    >>> is_legal(puzzle) and solve(puzzle)[0] == solution
    True
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

ROW = [i // 9 for i in range(81)]
COL = [i % 9 for i in range(81)]
BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
#: the 27 units (9 rows, 9 columns, 9 boxes), each a list of 9 cell indices
UNITS = (
    [[r * 9 + c for c in range(9)] for r in range(9)]
    + [[r * 9 + c for r in range(9)] for c in range(9)]
    + [[i for i in range(81) if BOX[i] == b] for b in range(9)]
)
ALL = 0x3FE  # bits 1..9
POPCOUNT = [bin(m).count("1") for m in range(1024)]
DIGITS = [[d for d in range(1, 10) if m >> d & 1] for m in range(1024)]


def is_legal(board: Sequence[int]) -> bool:
    """True when no digit repeats in any row, column or box among the filled cells (blanks are ignored)."""
    for unit in UNITS:
        seen = 0
        for i in unit:
            v = board[i]
            if v:
                if seen >> v & 1:
                    return False
                seen |= 1 << v
    return True


def solve(board: Sequence[int], *, limit: int = 1, rng: random.Random | None = None) -> list[list[int]]:
    """Up to ``limit`` solutions of ``board`` (depth-first, fewest candidates first); [] when it has none.

    ``rng`` shuffles the digit order, which turns solving an empty board into drawing a random full grid.
    """
    if len(board) != 81:
        raise ValueError(f"a Sudoku board has 81 cells, got {len(board)}")
    cells = [int(v) for v in board]
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(cells):
        if v:
            bit = 1 << v
            if (rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]]) & bit:
                return []
            rows[ROW[i]] |= bit
            cols[COL[i]] |= bit
            boxes[BOX[i]] |= bit
    empty = [i for i in range(81) if not cells[i]]
    found: list[list[int]] = []

    def search(todo: list[int]) -> bool:
        if not todo:
            found.append(cells.copy())
            return len(found) >= limit
        best, best_count, best_mask = -1, 10, 0
        for i in todo:  # the cell with the fewest candidates
            mask = ALL & ~(rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]])
            count = POPCOUNT[mask]
            if count < best_count:
                best, best_count, best_mask = i, count, mask
                if count <= 1:
                    break
        if best_count == 0:
            return False
        rest = [i for i in todo if i != best]
        digits = DIGITS[best_mask]
        if rng is not None and len(digits) > 1:
            digits = digits.copy()
            rng.shuffle(digits)
        r, c, b = ROW[best], COL[best], BOX[best]
        for d in digits:
            bit = 1 << d
            cells[best] = d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            stop = search(rest)
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            cells[best] = 0
            if stop:
                return True
        return False

    search(empty)
    return found


def random_grid(rng: random.Random) -> list[int]:
    """A random complete, legal grid."""
    return solve([0] * 81, rng=rng)[0]


def make_puzzle(rng: random.Random, givens: int) -> tuple[list[int], list[int]]:
    """A puzzle with exactly one solution and ``givens`` clues (more when no clue can go without losing uniqueness).

    Draw a full grid, keep ``givens`` random cells, then while a second solution exists reveal one cell where it
    disagrees with the grid (which rules that solution out); finally remove clues again, in random order, while
    the solution stays unique and there are more than ``givens``. Far fewer solver calls than digging from 81.
    """
    if not 17 <= givens <= 81:
        raise ValueError(f"givens must be in 17..81 (no 16-clue Sudoku has a unique solution), got {givens}")
    solution = random_grid(rng)
    order = list(range(81))
    rng.shuffle(order)
    puzzle = [0] * 81
    for i in order[:givens]:
        puzzle[i] = solution[i]
    while True:
        sols = solve(puzzle, limit=2)
        other = next((s for s in sols if s != solution), None)
        if other is None:
            break
        differ = [i for i in range(81) if other[i] != solution[i]]
        i = rng.choice(differ)
        puzzle[i] = solution[i]
    # revealing clues overshoots (about 32 givens whatever the target): dig back down while it stays unique
    clues = [i for i in range(81) if puzzle[i]]
    rng.shuffle(clues)
    count = len(clues)
    for i in clues:
        if count <= givens:
            break
        puzzle[i] = 0
        if len(solve(puzzle, limit=2)) == 1:
            count -= 1
        else:
            puzzle[i] = solution[i]
    return puzzle, solution


def deduce(board: Sequence[int]) -> list[int]:
    """Fill what naked and hidden singles alone determine (no guessing); returns the resulting board."""
    cells = [int(v) for v in board]
    cand = [0 if v else ALL for v in cells]
    for i, v in enumerate(cells):
        if v:
            _place(cells, cand, i, v)
    progress = True
    while progress:
        progress = False
        for i in range(81):  # naked singles
            if not cells[i] and POPCOUNT[cand[i]] == 1:
                _place(cells, cand, i, DIGITS[cand[i]][0])
                progress = True
        for unit in UNITS:  # hidden singles
            for d in range(1, 10):
                bit = 1 << d
                spots = [i for i in unit if not cells[i] and cand[i] & bit]
                if len(spots) == 1 and not any(cells[i] == d for i in unit):
                    _place(cells, cand, spots[0], d)
                    progress = True
    return cells


def _place(cells: list[int], cand: list[int], i: int, d: int) -> None:
    cells[i] = d
    cand[i] = 0
    bit = ~(1 << d)
    for unit in (UNITS[ROW[i]], UNITS[9 + COL[i]], UNITS[18 + BOX[i]]):
        for j in unit:
            cand[j] &= bit


def deducible(board: Sequence[int]) -> bool:
    """The difficulty label: True when naked and hidden singles alone solve the puzzle, False when it needs search."""
    return all(deduce(board))


def random_symmetry(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random validity-preserving Sudoku symmetries: cell permutations (n, 81) and digit maps (n, 10).

    Composed of band/stack swaps, row/column swaps within a band/stack, a transpose, and a relabelling of digits
    (0, the blank, maps to itself). Applied as ``digit_map[i][board[perm[i]]]``; keeps uniqueness and difficulty.
    """
    perms = np.empty((n, 81), dtype=np.int64)
    maps = np.zeros((n, 10), dtype=np.int64)
    for k in range(n):
        rows = np.concatenate([b * 3 + rng.permutation(3) for b in rng.permutation(3)])
        cols = np.concatenate([s * 3 + rng.permutation(3) for s in rng.permutation(3)])
        grid = rows[:, None] * 9 + cols[None, :]  # (9, 9) source cell of each target cell
        if rng.random() < 0.5:
            grid = grid.T
        perms[k] = grid.reshape(81)
        maps[k, 1:] = rng.permutation(9) + 1
    return perms, maps


def apply_symmetry(boards: np.ndarray, perms: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Apply per-row symmetries from :func:`random_symmetry` to boards (n, 81)."""
    moved = np.take_along_axis(boards, perms, axis=1)  # (n, 81)
    return np.take_along_axis(maps, moved, axis=1)


def generation_rate(givens: int, count: int = 100, seed: int = 0) -> dict[str, float]:
    """Measure :func:`make_puzzle`: milliseconds per puzzle, mean clue count, share deducible by singles."""
    import time

    rng = random.Random(seed)
    start = time.perf_counter()
    made = [make_puzzle(rng, givens)[0] for _ in range(count)]
    ms = (time.perf_counter() - start) / count * 1e3
    clues = sum(sum(1 for v in p if v) for p in made) / count
    return {"givens": givens, "ms_per_puzzle": ms, "mean_givens": clues, "deducible": sum(map(deducible, made)) / count}


if __name__ == "__main__":  # python examples/sudoku/grid.py: the generator's rate
    for target in (36, 30, 28, 26, 24, 22):
        r = generation_rate(target)
        print(
            f"{target} givens: {r['ms_per_puzzle']:.1f} ms/puzzle, mean {r['mean_givens']:.1f} givens, "
            f"{100 * r['deducible']:.0f}% deducible by singles"
        )
