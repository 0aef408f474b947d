"""The Sudoku example's solver, generator, difficulty label, legality checks and symmetries, on known puzzles."""

from __future__ import annotations

import random

import numpy as np
import sudoku_path  # noqa: F401
import torch
from hypothesis import given
from hypothesis import strategies as st
from sudoku.data import legal
from sudoku.grid import apply_symmetry, deduce, deducible, is_legal, make_puzzle, random_symmetry, solve


def board(text: str) -> list[int]:
    return [0 if ch in ".0" else int(ch) for ch in text]


# Wikipedia's example puzzle: singles alone solve it
EASY = board("53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79")
EASY_SOLUTION = board("534678912672195348198342567859761423426853791713924856961537284287419635345286179")
# Arto Inkala's "hardest Sudoku": unique, but singles get stuck
HARD = board("8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4..")
HARD_SOLUTION = board("812753649943682175675491283154237896369845721287169534521974368438526917796318452")


def test_solver_finds_the_unique_solution_of_known_puzzles() -> None:
    assert solve(EASY, limit=2) == [EASY_SOLUTION]
    assert solve(HARD, limit=2) == [HARD_SOLUTION]


def test_solver_sees_two_solutions_and_no_solution() -> None:
    # blank a "deadly rectangle" of the easy solution: two cells in each of two rows, swapped digits fit too
    grid = list(EASY_SOLUTION)
    a, b = _deadly_rectangle(grid)
    for i in a + b:
        grid[i] = 0
    sols = solve(grid, limit=5)
    assert len(sols) == 2 and EASY_SOLUTION in sols
    broken = list(EASY)
    broken[2] = 5  # a second 5 in the first row
    assert solve(broken) == []


def _deadly_rectangle(grid: list[int]) -> tuple[list[int], list[int]]:
    """Cells (r1,c1) (r1,c2) (r2,c1) (r2,c2) in two boxes with grid[r1,c1] == grid[r2,c2] and vice versa."""
    for r1 in range(9):
        for r2 in range(r1 + 1, 9):
            if r1 // 3 != r2 // 3:
                continue
            for c1 in range(9):
                for c2 in range(c1 + 1, 9):
                    if c1 // 3 == c2 // 3:
                        continue
                    x, y = grid[r1 * 9 + c1], grid[r1 * 9 + c2]
                    if grid[r2 * 9 + c1] == y and grid[r2 * 9 + c2] == x:
                        return [r1 * 9 + c1, r1 * 9 + c2], [r2 * 9 + c1, r2 * 9 + c2]
    raise AssertionError("no deadly rectangle in this grid")


def test_difficulty_label_on_known_puzzles() -> None:
    assert deducible(EASY) and deduce(EASY) == EASY_SOLUTION
    assert not deducible(HARD)
    partial = deduce(HARD)
    assert all(v == s for v, s in zip(partial, HARD_SOLUTION) if v)  # deductions are never wrong


def test_legality_checker_on_known_boards() -> None:
    assert is_legal(EASY) and is_legal(EASY_SOLUTION) and is_legal([0] * 81)
    row = list(EASY)
    row[2] = 5  # row 0 already has a 5
    col = list(EASY)
    col[9 * 8] = 5  # column 0 already has a 5
    box = list(EASY)
    box[10] = 3  # box 0 already has a 3 (not in row 1 or column 1)
    for bad in (row, col, box):
        assert not is_legal(bad)
    boards = torch.tensor([EASY, EASY_SOLUTION, row, col, box, [0] * 81])
    assert legal(boards).tolist() == [True, True, False, False, False, True]


@given(st.lists(st.integers(0, 81), min_size=0, max_size=81), st.integers(0, 2**32 - 1))
def test_batched_legality_matches_the_reference(blanks: list[int], seed: int) -> None:
    # a solution with some cells blanked and, half the time, one cell overwritten: legal and illegal boards
    cells = list(EASY_SOLUTION)
    for i in blanks:
        cells[i % 81] = 0
    rng = random.Random(seed)
    if rng.random() < 0.5:
        cells[rng.randrange(81)] = rng.randint(1, 9)
    assert bool(legal(torch.tensor([cells]))[0]) == is_legal(cells)


def test_generated_puzzles_are_unique_and_have_the_requested_clues() -> None:
    rng = random.Random(1)
    for givens in (36, 30, 26, 25):
        for _ in range(5):
            puzzle, solution = make_puzzle(rng, givens)
            assert solve(puzzle, limit=2) == [solution]
            assert is_legal(solution) and all(solution)
            assert all(p in (0, s) for p, s in zip(puzzle, solution))
            assert sum(1 for v in puzzle if v) >= givens


def test_symmetries_keep_puzzles_valid_unique_and_equally_hard() -> None:
    puzzles = np.array([EASY, HARD])
    solutions = np.array([EASY_SOLUTION, HARD_SOLUTION])
    perms, maps = random_symmetry(np.random.default_rng(0), 2)
    p2, s2 = apply_symmetry(puzzles, perms, maps), apply_symmetry(solutions, perms, maps)
    assert not np.array_equal(p2, puzzles)
    for p, s, easy in zip(p2.tolist(), s2.tolist(), (True, False)):
        assert solve(p, limit=2) == [s]
        assert deducible(p) == easy
