"""The README's Python snippets run as written, and CI runs the README's test command."""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import MASK_ID, TinyMDM

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def snippet(name: str) -> str:
    """The ```python block that follows the marker ``<!-- name: executed by tests/test_readme.py -->``."""
    return README.split(f"<!-- {name}: executed by tests/test_readme.py -->")[1].split("```python\n")[1].split("```")[0]


def namespace() -> dict[str, Any]:
    torch.manual_seed(0)
    ids = torch.full((2, 8), MASK_ID)
    x0 = torch.randint(0, MASK_ID, (4, 16))
    maskable = torch.ones(4, 16, dtype=torch.bool)
    maskable[:, :2] = False
    model = TinyMDM()
    return {
        "model": model,
        "fresh_model": copy.deepcopy(model),  # a second copy of the original backbone
        "MASK": MASK_ID,
        "input_ids": ids,
        "next_input_ids": ids.clone(),
        "x0": x0,
        "maskable": maskable,
        "batches": itertools.repeat((x0, maskable)),
    }


def test_quickstart_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = snippet("quickstart")
    assert len([line for line in block.splitlines() if line.strip()]) <= 5, "the quickstart must stay within 5 lines"
    monkeypatch.chdir(tmp_path)
    ns = namespace()
    exec(compile(block, "README quickstart", "exec"), ns)
    assert ns["out"].logits.shape == (2, 8, 32)
    assert (tmp_path / "my-relay" / "relay_config.json").is_file()


def test_training_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ns = namespace()
    assert all(torch.equal(a, b) for a, b in zip(ns["model"].parameters(), ns["fresh_model"].parameters()))
    exec(compile(snippet("training"), "README training", "exec"), ns)
    assert torch.isfinite(ns["res"].loss) and (tmp_path / "driver.pt").is_file()
    assert (tmp_path / "my-relay" / "model.safetensors").is_file()  # the trained backbone was saved
    ids = torch.full((2, 8), MASK_ID)
    with torch.no_grad():
        for relay in (ns["relay"], ns["restored"]):
            relay.eval()
        a, b = ns["relay"](ids), ns["restored"](ids)
        assert torch.equal(ns["relay"](ids, state=a.state).logits, ns["restored"](ids, state=b.state).logits)


def test_family_snippet_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    from relaykit.testing.twins.fast_dllm_v2 import tiny_fast_dllm_v2

    model = tiny_fast_dllm_v2()
    mask = model.config.vocab_size - 1
    # a random twin must never predict the mask token, or the upstream generate() loops forever (backbones.md)
    model.lm_head.register_forward_hook(lambda m, a, out: out.index_fill(-1, torch.tensor([mask]), -1e4))
    ns = {
        "model": model,
        "MASK": mask,
        "prompt": torch.randint(0, mask - 1, (1, 6)),
        "relaykit": __import__("relaykit"),
    }
    exec(compile(snippet("families"), "README families", "exec"), ns)
    assert ns["relay"].adapter.name == "fast_dllm_v2"
    assert int(capsys.readouterr().out.strip()) == ns["s"].nfe > 0


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    test_command = next(c.strip() for c in commands if "pytest" in c and "examples/" not in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
