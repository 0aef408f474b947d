"""The Sudoku study's files: evaluation caches keyed by content, whole-or-nothing JSON writes with clear errors for
damaged files, CSV errors naming file and line, a UTF-8 BOM accepted, complete grids kept out of the results, and
``--out`` pointing at a file refused with a message."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import sudoku_path  # noqa: F401
from sudoku import run, store
from sudoku.data import PuzzleSet, cached, generate, load_csv
from sudoku.evaluate import cache_key, evaluate
from sudoku.presets import PRESETS
from test_sudoku_csv import text
from test_sudoku_grid import EASY, EASY_SOLUTION, HARD, HARD_SOLUTION


def test_utf8_bom_header_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + f"quizzes,solutions\n{text(EASY, '0')},{text(EASY_SOLUTION, '0')}\n".encode())
    assert load_csv(path).puzzles.tolist() == [EASY]


def test_short_and_long_rows_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text(f"source,question,answer\nx,{text(EASY, '.')},{text(EASY_SOLUTION, '.')}\nonly-one-field\n")
    with pytest.raises(ValueError, match=r"short\.csv:3: the row has fewer fields than the header's 3"):
        load_csv(path)
    path.write_text(f"quizzes,solutions\n{text(EASY, '0')},{text(EASY_SOLUTION, '0')},extra\n")
    with pytest.raises(ValueError, match=r"short\.csv:2: the row has more fields than the header's 2"):
        load_csv(path)
    path.write_bytes(b"quizzes,solutions\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"short\.csv: not UTF-8 text"):
        load_csv(path)


def test_complete_grids_are_skipped_and_refused_in_evaluation(tmp_path: Path) -> None:
    path = tmp_path / "complete.csv"
    lines = [f"{text(EASY_SOLUTION, '0')},{text(EASY_SOLUTION, '0')}", f"{text(HARD, '0')},{text(HARD_SOLUTION, '0')}"]
    path.write_text("quizzes,solutions\n" + "\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"complete\.csv: skipped 1 complete grid\(s\) .*\(line\(s\) \[2\]\)"):
        data = load_csv(path)
    assert data.puzzles.tolist() == [HARD]
    path.write_text("quizzes,solutions\n" + lines[0] + "\n")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"no puzzles with a blank cell found"):
        load_csv(path)
    solved = np.array([EASY_SOLUTION])
    full = PuzzleSet(solved, solved, np.array([True]), "hand-made")
    with pytest.raises(ValueError, match=r"hand-made: puzzle\(s\) \[0\] have no blank cell: nothing to decode"):
        evaluate(None, full, (0.5,), method="mlm", batch=1, device="cpu", progress=False)  # type: ignore[arg-type]


def test_evaluation_cache_is_keyed_by_content() -> None:
    a = PuzzleSet(np.array([EASY]), np.array([EASY_SOLUTION]), np.array([True]), "kaggle")
    b = PuzzleSet(np.array([HARD]), np.array([HARD_SOLUTION]), np.array([False]), "kaggle")
    assert cache_key(a, (0.5,), source="eval") != cache_key(b, (0.5,), source="eval")
    assert cache_key(a, (0.5,), source="eval") == cache_key(a.take(1), (0.5,), source="eval")


def test_json_writes_are_whole_and_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store.write_json(tmp_path / "a.json", {"x": [1, 2]})
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    with pytest.raises(ValueError, match="not JSON compliant: nan"):
        store.write_json(tmp_path / "a.json", {"x": float("nan")})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}  # the failed write left it alone


def test_damaged_files_are_reported_or_recomputed(tmp_path: Path) -> None:
    cache = tmp_path / "mlm.json"
    cache.write_text('[{"method": "ml')
    with pytest.warns(UserWarning, match=r"mlm\.json \(cached evaluation\) is damaged.*recomputing it"):
        assert store.read_cache(cache, what="cached evaluation") is None
    npz = tmp_path / "train.npz"
    generate(3, givens=34, seed=0, progress=False).save(npz)
    npz.write_bytes(npz.read_bytes()[:40])
    with pytest.warns(UserWarning, match=r"train\.npz: damaged puzzle cache"):
        assert len(cached(npz, 3, givens=34, seed=0, progress=False)) == 3


def test_truncated_config_and_out_file_give_clear_messages(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run.check_config(out, PRESETS["quick"], 0)
    config = out / "config.json"
    config.write_text(config.read_text()[:30])
    with pytest.raises(SystemExit, match=r"config\.json \(the settings this folder was trained with\) is damaged"):
        run.check_config(out, PRESETS["quick"], 0)
    taken = tmp_path / "taken"
    taken.write_text("x")
    with pytest.raises(SystemExit, match=r"--out .*taken is a file, not a folder"):
        run.check_config(taken, PRESETS["quick"], 0)


def test_trained_methods_are_saved_and_reloaded_with_relaykit(tmp_path: Path) -> None:
    import torch
    from sudoku.model import MASK
    from sudoku.train import build, load_trained, train
    from test_sudoku_run import TINY

    preset = PRESETS["quick"].with_overrides(TINY)
    pool = generate(20, givens=(30, 34), seed=0, progress=False)
    path = train("mlm", preset, pool, tmp_path, device=torch.device("cpu"), seed=3, progress=False)
    saved = json.loads((tmp_path / "mlm" / "relay_config.json").read_text())
    assert saved["backbone_weights"] == "model.safetensors"  # the trained backbone is in the folder
    relay, record = load_trained(path, preset, torch.device("cpu"))  # RelayModel.from_pretrained(fresh, folder)
    model, reference = build(preset, torch.device("cpu"))  # the same weights from the training checkpoint
    ck = torch.load(path, weights_only=False)
    model.load_state_dict(ck["model"])
    reference.channel.load_state_dict(ck["channel"])
    model.eval()
    ids = torch.from_numpy(pool.puzzles[:4])  # blanks are 0, the mask id
    assert MASK == 0
    with torch.no_grad():
        a, b = relay(ids), reference(ids)
        assert torch.equal(relay(ids, state=a.state).logits, reference(ids, state=b.state).logits)
    assert record["method"] == "mlm"
