"""The Sudoku study end to end on a handful of puzzles with a tiny model, and exact resumption of training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sudoku_path  # noqa: F401
import torch
from sudoku import run
from sudoku.data import generate
from sudoku.presets import METHODS, PRESETS
from sudoku.report import KEYS
from sudoku.train import train
from test_sudoku_csv import text
from test_sudoku_grid import EASY, EASY_SOLUTION, HARD

TINY = ["width=16", "layers=1", "heads=2", "budget=12", "warm=6", "batch=8", "train_puzzles=20", "eval_puzzles=6"]
TINY += ["eval_batch=8", "checkpoint_every=4", "thresholds=0.0,0.3", "givens=30,34", "val_puzzles=4"]


def test_quick_preset_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["--preset", "quick", "--out", str(out), "--threads", "1", "--no-progress", "--set", *TINY]
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())
    assert (out / "pareto.png").stat().st_size > 1000
    methods = list(METHODS) + ["relay_sg_h0", "relay_h0"]
    assert {r["method"] for r in rows} == set(methods)
    assert all(tuple(r) == KEYS + ("cells_per_forward",) for r in rows)
    assert {r["puzzles"] for r in rows if r["subset"] == "val"} == {4}  # the validation set, another seed
    alls = [r for r in rows if r["subset"] == "all"]
    assert len(alls) == len(methods) * 2 and all(r["puzzles"] == 6 for r in alls)
    assert {r["threshold"] for r in rows} == {0.0, 0.3}
    for r in rows:
        assert 0 <= r["accuracy"] <= r["cell_accuracy"] <= 1 or r["accuracy"] == 1
        assert 0 <= r["legal_fraction"] <= 1 and r["nfe"] >= 1
    words = [line.split() for line in printed.splitlines()]
    table_lines = [w for w in words if len(w) > 2 and w[0] in methods and w[2] in ("all", "deducible", "search", "val")]
    assert len(table_lines) == len(rows)  # the 'all' table plus the per-subset table
    compared = json.loads((out / "comparisons.json").read_text())
    assert {(c["method"], c["ref"]) for c in compared} >= {("relay", "mlm"), ("relay", "rollout"), ("mlm", "rollout")}
    assert len([w for w in words if len(w) > 2 and w[0] == "relay" and w[1] in ("mlm", "rollout")]) == 4
    # a rerun resumes from the finished checkpoints and cached evaluations: same rows
    assert run.main(argv) == 0
    assert json.loads((out / "results.json").read_text()) == rows
    # the same trained models evaluated on an external CSV (Kaggle layout) instead of generated puzzles
    csv = tmp_path / "kaggle.csv"
    csv.write_text(f"quizzes,solutions\n{text(EASY, '0')},{text(EASY_SOLUTION, '0')}\n{text(HARD, '0')},\n")
    assert run.main([*argv, "--eval-file", str(csv)]) == 0
    ext = json.loads((out / "results.json").read_text())
    assert {(r["subset"], r["puzzles"]) for r in ext} == {("all", 2), ("deducible", 1), ("search", 1), ("val", 4)}
    # evaluation-only settings reuse the trained checkpoints; training settings refuse the folder
    assert run.main([*argv, "thresholds=0.1"]) == 0
    assert {r["threshold"] for r in json.loads((out / "results.json").read_text())} == {0.1}
    with pytest.raises(SystemExit, match="other settings"):
        run.main([*argv[: -len(TINY)], *TINY[:-1], "givens=28,30"])


def test_interrupted_training_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preset = PRESETS["quick"].with_overrides(TINY)
    pool = generate(20, givens=(30, 34), seed=0, progress=False)
    device = torch.device("cpu")
    whole = tmp_path / "whole"
    cut = tmp_path / "cut"
    for d in (whole, cut):
        d.mkdir()
    train("mlm", preset, pool, whole, device=device, seed=3, progress=False)
    train("relay", preset, pool, whole, device=device, seed=3, progress=False)
    train("mlm", preset, pool, cut, device=device, seed=3, progress=False)

    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def flaky_step(self: torch.optim.AdamW, *a: object, **k: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:  # relay runs passes 6 -> 8 -> 10 (checkpoint) -> interrupted before 12
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        train("relay", preset, pool, cut, device=device, seed=3, progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert (cut / "relay.running.pt").exists() and not (cut / "relay.pt").exists()
    train("relay", preset, pool, cut, device=device, seed=3, progress=False)
    a = torch.load(whole / "relay.pt", weights_only=False)
    b = torch.load(cut / "relay.pt", weights_only=False)
    assert a["passes"] == b["passes"] == preset.budget
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["channel"]:
        assert torch.equal(a["channel"][key], b["channel"][key]), key
