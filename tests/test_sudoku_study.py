"""The Sudoku study's settings and statistics: every factor is a --set key, the K-step schedule restart, the tied
model, seed aggregation (valid JSON, std), matched-NFE comparisons with bootstrap intervals, --help and the
dependency check, and resuming a folder trained before a setting existed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import sudoku_path  # noqa: F401
import torch
from sudoku import run
from sudoku.compare import at, compare, curve, first_at
from sudoku.model import ModelConfig, SudokuMDM
from sudoku.presets import PRESETS
from sudoku.report import aggregate, write_json
from sudoku.train import lr_factor


def test_every_factor_is_a_set_key_with_checked_values() -> None:
    p = PRESETS["default"].with_overrides(
        [
            "update=all",
            "empty=zero",
            "tied=true",
            "relay_schedule=restart",
            "relay_lr=3e-3",
            "train_fraction=0",
            "warm=300",
            "hard_puzzles=50",
            "hard_givens=22,23",
            "val_puzzles=10",
        ]
    )
    assert (p.update, p.empty, p.model.tied, p.relay_schedule, p.relay_lr) == ("all", "zero", True, "restart", 3e-3)
    assert (p.train_fraction, p.warm, p.hard_puzzles, p.hard_givens, p.val_puzzles) == (0.0, 300, 50, (22, 23), 10)
    with pytest.raises(ValueError, match="empty must be one of \\('skip', 'zero'\\), got 'all'"):
        PRESETS["default"].with_overrides(["empty=all"])
    with pytest.raises(ValueError, match="expects a boolean.*got 'maybe'"):
        PRESETS["default"].with_overrides(["tied=maybe"])


def test_relay_schedule_restart_warms_up_again_at_the_warm_start() -> None:
    p = PRESETS["default"]
    r = p.with_overrides(["relay_schedule=restart"])
    assert lr_factor(p.warm, p, "relay") == lr_factor(p.warm, p, "mlm") < 0.6  # continue: half-way down the cosine
    assert lr_factor(p.warm, r, "relay") == pytest.approx(1 / r.warmup)  # restart: warm-up from the warm start
    assert lr_factor(p.warm + r.warmup, r, "relay") == pytest.approx(1.0)
    assert lr_factor(r.budget - 1, r, "relay") == pytest.approx(0.1, abs=1e-3)
    assert lr_factor(p.warm, r, "mlm") == lr_factor(p.warm, p, "mlm")  # MLM is not affected


def test_tied_model_shares_embedding_and_head() -> None:
    m = SudokuMDM.from_config(ModelConfig(width=16, layers=1, heads=2, tied=True))
    assert m.head.weight is m.tok.weight
    assert SudokuMDM(width=16, layers=1, heads=2).head.weight is not SudokuMDM(width=16, layers=1, heads=2).tok.weight
    out = m(torch.zeros(2, 81, dtype=torch.long))  # (b, n, V)
    out.sum().backward()
    assert m.tok.weight.grad is not None and out.shape == (2, 81, 10)


def _row(method: str, acc: float, nfe: float, tau: float = 0.9) -> dict[str, object]:
    return dict(
        method=method,
        threshold=tau,
        subset="all",
        puzzles=4,
        accuracy=acc,
        cell_accuracy=acc,
        nfe=nfe,
        legal_fraction=0.5,
        cells_per_forward=3.0,
    )


def test_aggregate_keeps_keys_and_adds_std_and_seeds(tmp_path: Path) -> None:
    rows = aggregate([[_row("relay", 0.5, 10.0)], [_row("relay", 0.7, 12.0)], [_row("relay", 0.6, 14.0)]], [0, 1, 2])
    (r,) = rows
    assert r["accuracy"] == pytest.approx(0.6) and r["nfe"] == pytest.approx(12.0) and r["puzzles"] == 4
    assert r["accuracy_std"] == pytest.approx(0.1) and r["nfe_std"] == pytest.approx(2.0) and r["seeds"] == [0, 1, 2]
    write_json(rows, tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert set(back[0]) >= {
        "method",
        "threshold",
        "subset",
        "puzzles",
        "accuracy",
        "cell_accuracy",
        "nfe",
        "legal_fraction",
        "accuracy_std",
        "nfe_std",
        "seeds",
    }
    with pytest.raises(ValueError):  # a NaN is refused, never written as invalid JSON
        write_json([_row("relay", math.nan, 1.0)], tmp_path / "bad.json")
    with pytest.raises(ValueError, match="has 1 rows for 2 seeds"):
        aggregate([[_row("relay", 0.5, 10.0)], []], [0, 1])


def test_interpolation_along_the_threshold_curve_never_extrapolates() -> None:
    xs, ys = np.array([8.0, 4.0]), np.array([1.0, 0.5])  # unsorted points
    assert at(6.0, xs, ys) == pytest.approx(0.75)
    assert math.isnan(at(3.0, xs, ys)) and math.isnan(at(9.0, xs, ys))
    # NFE at matched accuracy: the first crossing along the NFE order, even when accuracy later drops
    nfe, acc = np.array([5.0, 10.0, 19.0, 38.0]), np.array([0.0, 0.2, 0.65, 0.61])
    assert first_at(0.56, nfe, acc) == pytest.approx(10 + (0.36 / 0.45) * 9)
    assert math.isnan(first_at(0.7, nfe, acc)) and first_at(0.0, nfe, acc) == 5.0


def test_compare_paired_bootstrap() -> None:
    rng = np.random.default_rng(0)
    n = 300
    # reference: 40% at NFE 10 (threshold 0), 60% at NFE 20 (threshold 1); the method: same accuracy for half the NFE
    ref = {"solved": np.stack([rng.random(n) < 0.4, rng.random(n) < 0.6]), "nfe": np.array([[10] * n, [20] * n])}
    better = {"solved": ref["solved"].copy(), "nfe": ref["nfe"] // 2}
    rows = compare([better], [ref], (0.0, 1.0), draws=200)
    top = rows[1]  # against the reference's threshold-1 point (NFE 20, 60%)
    assert top["gap"] is None  # the method's curve ends at NFE 10: no extrapolation
    assert top["ratio"] == pytest.approx(0.5)
    assert top["ratio_lo"] <= 0.5 <= top["ratio_hi"]
    low = rows[0]  # at NFE 10 the method is at its 60% point: 20 points ahead of the reference's 40%
    assert low["gap"] == pytest.approx(ref["solved"][1].mean() - ref["solved"][0].mean())
    assert low["gap_lo"] < low["gap"] < low["gap_hi"] and low["gap_lo"] > 0
    same = compare([ref, ref], [ref, ref], (0.0, 1.0), draws=50)  # a method against itself: zero, zero-width
    assert same[0]["gap"] == 0 and same[0]["gap_lo"] == same[0]["gap_hi"] == 0
    assert curve(ref["solved"], ref["nfe"])[1].tolist() == [10.0, 20.0]


def test_help_lists_presets_and_set_keys_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = capsys.readouterr().out
    for name in PRESETS:
        assert f"\n  {name} " in text
    for key in ("update", "empty", "tied", "relay_schedule", "relay_lr", "train_fraction", "hard_puzzles", "warm"):
        assert f"\n  {key} " in text
    line = next(line for line in text.splitlines() if line.strip().startswith("empty "))
    assert "skip / skip / skip" in line


def test_missing_dependency_is_reported_before_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name))
    with pytest.raises(SystemExit, match="needs matplotlib"):
        run.main(["--preset", "quick", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()  # nothing generated or trained


def test_a_folder_from_before_a_setting_existed_still_resumes(tmp_path: Path) -> None:
    preset = PRESETS["quick"]
    config = {"preset": {k: v for k, v in preset.to_dict().items() if k not in run.EVAL_ONLY}, "seed": 0}
    for key in ("empty", "relay_schedule"):
        del config["preset"][key]
    del config["preset"]["model"]["tied"]
    tmp_path.joinpath("config.json").write_text(json.dumps(config))
    run.check_config(tmp_path, preset, 0)  # missing keys read as their defaults
    with pytest.raises(SystemExit, match="other settings"):
        run.check_config(tmp_path, preset.with_overrides(["empty=zero"]), 0)


@pytest.mark.parametrize("empty", ["skip", "zero"])
def test_h_zeroed_keeps_the_learned_bias_r0(empty: str) -> None:
    from sudoku.evaluate import zeroed_h
    from sudoku.model import attach_relay

    torch.manual_seed(0)
    model = SudokuMDM(width=16, layers=1, heads=2)
    relay = attach_relay(model, empty=empty)
    torch.nn.init.normal_(relay.channel.proj.weight)
    torch.nn.init.normal_(relay.channel.proj.bias)
    ids = torch.zeros(2, 81, dtype=torch.long)
    ids[:, :5] = torch.arange(1, 6)
    with torch.no_grad():
        first = relay(ids)  # no state yet: h = 0 everywhere (R(0) added only with empty="zero")
        with zeroed_h(relay):
            zeroed = relay(ids, state=relay(ids).state)  # the state given is ignored: h = 0 at every step
        bare = model(ids)
    assert torch.allclose(zeroed.logits, first.logits, atol=1e-6)
    assert torch.equal(zeroed.logits, bare) == (empty == "skip")


def test_ablation_table_reads_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sudoku import ablation

    rows = [
        _row(m, acc, nfe, tau) | {"subset": sub}
        for m, acc in (("relay", 0.6), ("relay_h0", 0.5))
        for tau, nfe in ((0.85, 10.0), (0.95, 20.0))
        for sub in ("all", "val")
    ]
    write_json(rows, tmp_path / "results.json")
    gap = {"gap": 0.05, "gap_lo": -0.01, "gap_hi": 0.1}
    compared = [
        {"method": "relay", "ref": ref, "set": "eval", "ref_threshold": t, **gap}
        for ref in ("mlm", "rollout")
        for t in (0.85, 0.95)
    ]
    (tmp_path / "comparisons.json").write_text(json.dumps(compared))
    summary = {"seeds": [{"seed": 0, "relay": {"train_cells_per_forward": 6.5}}]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert ablation.main([f"base={tmp_path}"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("| base | 60.0 / 10.0 | 60.0 / 20.0 | 60.0 / 10.0 |")
    assert "+5.0 [-1.0, +10.0]; +5.0 [-1.0, +10.0]" in line and "| +10.0 / +10.0 | 6.5 / 3.0 |" in line
