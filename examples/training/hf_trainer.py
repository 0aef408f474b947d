"""Relay training with the Hugging Face Trainer: ``relaykit.integrations.transformers.RelayTrainerMixin``.

    python examples/training/hf_trainer.py --max-steps 100

The mixin overrides public Trainer methods only: ``compute_loss`` runs one window of a
:class:`relaykit.PersistentRollout` per micro-batch, ``save_model`` (also called for every checkpoint) adds
relaykit's format (``relay_config.json`` + ``relay_model.safetensors``) and the rollout state
(``relay_rollout.pt``), and ``train(resume_from_checkpoint=...)`` restores that state, so a resumed run continues
exactly. The Trainer's batch (dicts with ``x0`` and ``maskable``) is the pool from which rows that finished take
new samples; samples not needed that step are dropped (``trainer.rollout.discarded`` counts them).

Keep ``remove_unused_columns=False`` in the TrainingArguments: ``x0`` / ``maskable`` are not model arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy import MASK, progressions, toy_mdm  # noqa: E402

import relaykit  # noqa: E402
from relaykit import Threshold  # noqa: E402
from relaykit.integrations.transformers import ROLLOUT_FILE, RelayTrainerMixin  # noqa: E402

DRIVER_FILE = ROLLOUT_FILE


class ProgressionDataset(torch.utils.data.Dataset):
    """The toy task as a map-style dataset of dicts, as a Trainer expects."""

    def __init__(self, size: int, length: int = 12, seed: int = 0) -> None:
        x0, maskable = next(progressions(size, length, seed=seed))
        self.x0, self.maskable = x0, maskable

    def __len__(self) -> int:
        return self.x0.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x0": self.x0[i], "maskable": self.maskable[i]}


def make_trainer(output_dir: str, *, max_steps: int, batch_size: int = 8, seed: int = 0, **args: Any) -> Any:
    from transformers import Trainer, TrainingArguments

    class RelayTrainer(RelayTrainerMixin, Trainer):
        pass

    torch.manual_seed(seed)
    relay = relaykit.attach(toy_mdm(), embedding="tok_emb", final_hidden="norm", mask_token_id=MASK)
    options = {
        "learning_rate": 3e-3,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 10,
        "disable_tqdm": True,
        **args,
    }
    training_args = TrainingArguments(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        remove_unused_columns=False,  # x0 / maskable are not model arguments
        seed=seed,
        **options,
    )
    return RelayTrainer(
        model=relay,
        args=training_args,
        train_dataset=ProgressionDataset(4096, seed=seed),
        rollout={"method": "relay", "policy": Threshold(0.9), "seed": seed},
    )


def main(argv: list[str] | None = None) -> Any:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--output-dir", default="runs/hf_trainer")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    trainer = make_trainer(args.output_dir, max_steps=args.max_steps)
    result = trainer.train()
    print(f"trained {result.global_step} steps; final loss {result.training_loss:.3f}")
    final = Path(args.output_dir) / "final"
    trainer.save_model(str(final))  # relaykit's format: the channel and the trained backbone
    torch.manual_seed(0)
    restored = relaykit.RelayModel.from_pretrained(toy_mdm(), final)  # a fresh copy of the original backbone
    relay = trainer.model
    z = torch.full((2, 12), MASK)
    with torch.no_grad():
        same = torch.equal(restored(z, state=restored(z).state).logits, relay(z, state=relay(z).state).logits)
    print(f"saved to {final}; reloaded onto a fresh backbone, logits equal to the trained model's: {same}")
    return trainer


if __name__ == "__main__":
    main()
