"""Loading Sudoku-Extreme ('question,answer', '.') and Kaggle ('quizzes,solutions', '0') CSV files."""

from __future__ import annotations

from pathlib import Path

import pytest
import sudoku_path  # noqa: F401
from sudoku.data import load_csv
from test_sudoku_grid import EASY, EASY_SOLUTION, HARD, HARD_SOLUTION


def text(cells: list[int], blank: str) -> str:
    return "".join(str(v) if v else blank for v in cells)


def test_sudoku_extreme_layout(tmp_path: Path) -> None:
    path = tmp_path / "extreme.csv"
    lines = ["source,question,answer,rating"]
    lines += [f"x,{text(p, '.')},{text(s, '.')},3" for p, s in ((EASY, EASY_SOLUTION), (HARD, HARD_SOLUTION))]
    path.write_text("\n".join(lines) + "\n")
    data = load_csv(path)
    assert data.source == "sudoku-extreme" and len(data) == 2
    assert data.puzzles.tolist() == [EASY, HARD] and data.solutions.tolist() == [EASY_SOLUTION, HARD_SOLUTION]
    assert data.deducible.tolist() == [True, False]
    assert len(load_csv(path, limit=1)) == 1


def test_kaggle_layout_and_missing_solutions_are_solved(tmp_path: Path) -> None:
    path = tmp_path / "kaggle.csv"
    path.write_text(f"quizzes,solutions\n{text(HARD, '0')},{text(HARD_SOLUTION, '0')}\n{text(EASY, '0')},\n")
    data = load_csv(path)
    assert data.source == "kaggle"
    assert data.puzzles.tolist() == [HARD, EASY] and data.solutions.tolist() == [HARD_SOLUTION, EASY_SOLUTION]


def test_bad_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    unknown = tmp_path / "u.csv"
    unknown.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="unknown CSV layout"):
        load_csv(unknown)
    short = tmp_path / "s.csv"
    short.write_text("quizzes,solutions\n123,456\n")
    with pytest.raises(ValueError, match="expected 81 characters"):
        load_csv(short)
    wrong = tmp_path / "w.csv"
    bad = list(EASY_SOLUTION)
    bad[0], bad[1] = bad[1], bad[0]
    wrong.write_text(f"quizzes,solutions\n{text(EASY, '0')},{text(bad, '0')}\n")
    with pytest.raises(ValueError, match="not a legal completion"):
        load_csv(wrong)
