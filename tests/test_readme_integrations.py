"""The README's integration snippets (Hugging Face Trainer, lm-evaluation-harness) run as written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import MASK_ID, TinyMDM

import relaykit
from relaykit import RelayModel

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def snippet(name: str) -> str:
    """The ```python block after ``<!-- name: executed by tests/test_readme_integrations.py -->``."""
    marker = f"<!-- {name}: executed by tests/test_readme_integrations.py -->"
    return README.split(marker)[1].split("```python\n")[1].split("```")[0]


def test_trainer_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ids = torch.randint(0, MASK_ID, (16, 8))
    labels = ids.masked_fill(torch.arange(8) < 2, -100)  # a 2-token prompt
    dataset = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels)]
    ns = {"model": TinyMDM(), "MASK": MASK_ID, "dataset": dataset, "relaykit": relaykit}
    exec(compile(snippet("hf-trainer"), "README hf-trainer", "exec"), ns)
    assert ns["trainer"].rollout.steps == 4
    for folder in (tmp_path / "runs/relay/checkpoint-2", tmp_path / "runs/relay/final"):
        assert {"relay_config.json", "relay_model.safetensors", "relay_rollout.pt"} <= {
            p.name for p in folder.iterdir()
        }
    loaded = RelayModel.from_pretrained(TinyMDM(), tmp_path / "runs/relay/final")
    for key, value in loaded.channel.state_dict().items():
        assert torch.equal(value, ns["relay"].channel.state_dict()[key]), key
