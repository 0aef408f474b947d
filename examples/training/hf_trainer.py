"""Relay training with the Hugging Face Trainer: a mixin that overrides ``compute_loss``, nothing else.

    python examples/training/hf_trainer.py --max-steps 100

``RelayTrainerMixin.compute_loss`` runs one window of a :class:`relaykit.PersistentRollout` per micro-batch. The
Trainer's batch (dicts with ``x0`` and ``maskable``) is the pool from which rows that finished take new samples;
samples not needed that step are dropped (``trainer.rollout.discarded`` counts them), so an "epoch" of the
Trainer reads more samples than are trained on, as Algorithm 1 draws samples only when a row frees up.
The driver's state is saved in every checkpoint folder (``relay_rollout.pt``) and restored on
``trainer.train(resume_from_checkpoint=...)``.

Keep ``remove_unused_columns=False`` in the TrainingArguments: ``x0`` / ``maskable`` are not model arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy import MASK, ToyMDM, progressions  # noqa: E402

import relaykit  # noqa: E402
from relaykit import PersistentRollout, Threshold  # noqa: E402

DRIVER_FILE = "relay_rollout.pt"


class RelayTrainerMixin:
    """Mix into ``transformers.Trainer`` (before it) to train with persistent relay rollouts.

    Example::

        class RelayTrainer(RelayTrainerMixin, Trainer): ...
        trainer = RelayTrainer(model=relay, args=args, train_dataset=ds, rollout={"method": "relay", "k": 2})
    """

    def __init__(self, *args: Any, rollout: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rollout_options = dict(rollout or {})
        self.rollout: PersistentRollout | None = None
        self._rollout_resume: dict[str, Any] | None = None
        # our loss is already a per-batch mean: the Trainer must divide it by the accumulation steps itself
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        if self.rollout is None:
            options = {"batch_size": int(inputs["x0"].shape[0]), **self.rollout_options}
            self.rollout = PersistentRollout(model, **options)
            if self._rollout_resume is not None:
                self.rollout.load_state_dict(self._rollout_resume, skip_consumed=False)
        res = self.rollout.step(refill=inputs)
        return (res.loss, res) if return_outputs else res.loss

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        if isinstance(resume_from_checkpoint, str):
            path = os.path.join(resume_from_checkpoint, DRIVER_FILE)
            self._rollout_resume = torch.load(path, weights_only=True)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)  # type: ignore[misc]

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)  # type: ignore[misc]
        if self.rollout is not None and self.args.should_save:
            folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
            torch.save(self.rollout.state_dict(), os.path.join(folder, DRIVER_FILE))


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
    relay = relaykit.attach(ToyMDM(), embedding="tok", final_hidden="norm", mask_token_id=MASK)
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
    return trainer


if __name__ == "__main__":
    main()
