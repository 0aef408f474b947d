"""The README's quickstart runs as written, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tiny import MASK_ID, TinyMDM

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quickstart_runs_as_written(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    block = README.split("<!-- quickstart")[1].split("```python\n")[1].split("```")[0]
    assert len([line for line in block.splitlines() if line.strip()]) <= 5, "the quickstart must stay within 5 lines"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ids = torch.full((2, 8), MASK_ID)
    ns = {"model": TinyMDM(), "MASK": MASK_ID, "input_ids": ids, "next_input_ids": ids.clone()}
    exec(compile(block, "README quickstart", "exec"), ns)
    assert ns["out"].logits.shape == (2, 8, 32)
    assert (tmp_path / "my-relay" / "relay_config.json").is_file()


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    test_command = next(c.strip() for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
