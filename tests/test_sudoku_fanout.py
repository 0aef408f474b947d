"""The study's fan-out (examples/sudoku/fanout.py): which jobs each recipe gets and what they wait for, what a
recipe may reuse from the baseline, the refusal of recipes that would change the puzzles, assembling over the
seeds that finished after a deadline; and puzzle generation that does not depend on the number of workers."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import sudoku_path  # noqa: F401
from sudoku import data as sdata
from sudoku import fanout


def _args(tmp_path: Path, **kw: object) -> argparse.Namespace:
    base = dict(preset="quick", device="cpu", out=tmp_path / "runs", data=None, set=["width=16"], seeds="0,1")
    return argparse.Namespace(**{**base, **kw})


def _plan(tmp_path: Path, *recipes: str) -> dict[str, fanout.Job]:
    args = _args(tmp_path)
    jobs = fanout.plan(args, [fanout.parse_recipe(r) for r in recipes], [0, 1])
    return {j.name: j for j in jobs}


def test_reuse_follows_the_phase_a_recipe_changes() -> None:
    assert fanout.parse_recipe("a: update=all relay_lr=1e-4").reuses() == ("mlm", "rollout")
    assert fanout.parse_recipe("b: train_fraction=0 relay_lr=1e-4").reuses() == ("mlm",)
    assert fanout.parse_recipe("c: tied=true").reuses() == ()
    assert fanout.parse_recipe("d").reuses() == ("mlm", "rollout")


def test_job_graph_of_a_baseline_and_three_kinds_of_recipe(tmp_path: Path) -> None:
    jobs = _plan(tmp_path, "base", "relay_only: update=all", "kstep: train_fraction=0", "full: tied=true")
    names = set(jobs)
    for seed in (0, 1):
        assert {f"base/s{seed}/{m}" for m in fanout.METHODS} <= names
        assert {f"relay_only/s{seed}/relay_sg", f"relay_only/s{seed}/relay"} <= names
        assert f"relay_only/s{seed}/mlm" not in names and f"relay_only/s{seed}/rollout" not in names
        assert f"kstep/s{seed}/rollout" in names and f"kstep/s{seed}/mlm" not in names
        assert {f"full/s{seed}/{m}" for m in fanout.METHODS} <= names
        # a reused MLM is the baseline's of the same seed, copied in before the job starts
        assert jobs[f"relay_only/s{seed}/relay"].after == [f"base/s{seed}/mlm"]
        assert jobs[f"relay_only/s{seed}/relay"].before_start == [("base", "mlm", seed)]
        assert jobs[f"full/s{seed}/relay"].after == [f"full/s{seed}/mlm"]
    assemble = jobs["relay_only/assemble"]
    assert assemble.aggregate and {"base/s0/rollout", "base/s1/mlm"} <= set(assemble.after)
    assert ("base", "rollout", 1) in assemble.before_start
    assert assemble.argv[assemble.argv.index("--seeds") + 1] == "0,1"
    # every job gets the common settings first, then the recipe's
    relay = jobs["relay_only/s0/relay"].argv
    assert relay[relay.index("--set") + 1 :][:2] == ["width=16", "update=all"]


def test_recipes_that_change_the_puzzles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="change the puzzles"):
        fanout.main(["--out", str(tmp_path), "--recipe", "base", "--recipe", "hard: givens=22,24"])
    with pytest.raises(SystemExit, match="plain name"):
        fanout.parse_recipe("a b: update=all")
    with pytest.raises(SystemExit, match="key=value"):
        fanout.parse_recipe("a: update")


def test_after_a_deadline_a_recipe_assembles_over_its_finished_seeds(tmp_path: Path) -> None:
    jobs = _plan(tmp_path, "base", "relay_only: update=all")
    listed = list(jobs.values())
    for job in listed:
        job.state = "done" if "/s0/" in job.name else "failed"
    assemble = jobs["relay_only/assemble"]
    assemble.state = "waiting"
    fanout._partial(assemble, listed, [0, 1])
    assert assemble.state == "waiting" and assemble.after == []
    assert assemble.argv[assemble.argv.index("--seeds") + 1] == "0"
    assert {c[2] for c in assemble.before_start} == {0}
    nothing = jobs["base/assemble"]
    for job in listed:
        job.state = "failed"
    nothing.state = "waiting"
    fanout._partial(nothing, listed, [0, 1])
    assert nothing.state == "skipped"


def test_generated_puzzles_do_not_depend_on_the_number_of_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdata, "CHUNK", 3)
    one = sdata.generate(7, givens=(32, 34), seed=5, progress=False, workers=1)
    two = sdata.generate(7, givens=(32, 34), seed=5, progress=False, workers=2)
    assert np.array_equal(one.puzzles, two.puzzles) and np.array_equal(one.solutions, two.solutions)
    assert np.array_equal(one.deducible, two.deducible)
    assert len({tuple(p) for p in one.puzzles}) == 7  # chunks draw different puzzles
    other = sdata.generate(7, givens=(32, 34), seed=6, progress=False, workers=1)
    assert not np.array_equal(one.puzzles, other.puzzles)
