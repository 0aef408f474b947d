"""RelayTrainerMixin: train relay with a Hugging Face ``Trainer`` (or a library's subclass of it).

Only public Trainer extension points are used: ``compute_loss`` (one window of Algorithm 1's persistent rollout
per training step), ``save_model`` (which the Trainer also calls for every checkpoint folder) and ``train``
(to find the checkpoint a run resumes from). Put the mixin first in the bases, in front of ``Trainer`` or of a
library's Trainer subclass that overrides ``compute_loss`` (dllm's MDLM / BD3LM trainers do): training steps
use the relay rollout; evaluation uses the rollout too, or the library's own loss with ``eval_loss="parent"``.

What a checkpoint folder and ``trainer.save_model(dir)`` hold, besides what the Trainer writes itself (the
weights of the whole model, optimiser, scheduler, RNG states):

* ``relay_config.json`` + ``relay_model.safetensors``: relaykit's format (``relay.save_pretrained``), so
  ``RelayModel.from_pretrained(backbone, folder)`` loads the trained channel;
* ``relay_rollout.pt`` (``relay_rollout-<rank>.pt`` with several processes): the persistent rollout's
  ``state_dict()`` (rows, z, h, RNG), so ``trainer.train(resume_from_checkpoint=...)`` continues exactly.

Batches: dicts with ``x0`` and ``maskable`` (b, n), or the SFT layout of HF / dllm collators, ``input_ids`` with
``labels`` (-100 where nothing is predicted, e.g. the prompt) and optionally ``attention_mask``: then
``maskable = (labels != -100) & attention_mask``. Keep ``remove_unused_columns=False`` for ``x0`` / ``maskable``.
The Trainer's model must be the RelayModel (``relaykit.attach(...)``), so that DDP / FSDP wrap the channel.

Example::

    from transformers import Trainer, TrainingArguments
    from relaykit.integrations.transformers import RelayTrainerMixin

    class RelayTrainer(RelayTrainerMixin, Trainer):   # or (RelayTrainerMixin, SomeLibraryTrainer)
        pass

    relay = relaykit.attach(model, mask_token_id=MASK)
    trainer = RelayTrainer(model=relay, args=TrainingArguments("out", remove_unused_columns=False),
                           train_dataset=ds, rollout={"method": "relay", "k": 2})
    trainer.train()
    trainer.save_model("out/final")                   # RelayModel.from_pretrained(model, "out/final") loads it
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from relaykit.driver import PersistentRollout
from relaykit.model import RelayOutput, unwrap_relay
from relaykit.rollout import bptt_rollout

ROLLOUT_FILE = "relay_rollout.pt"
EvalLoss = Literal["rollout", "parent"]
IGNORE_INDEX = -100


def relay_batch(inputs: Mapping[str, Any]) -> dict[str, Tensor]:
    """The (x0, maskable) rows of a Trainer batch.

    ``{"x0", "maskable"}`` is taken as is; ``{"input_ids", "labels"[, "attention_mask"]}`` (HF / dllm SFT
    collators) gives ``x0 = input_ids`` and ``maskable = (labels != -100) & attention_mask``.
    """
    if "x0" in inputs and "maskable" in inputs:
        return {"x0": inputs["x0"], "maskable": inputs["maskable"].bool()}
    if "input_ids" in inputs and "labels" in inputs:
        x0, labels = inputs["input_ids"], inputs["labels"]
        if labels.shape != x0.shape:
            raise ValueError(
                f"labels {tuple(labels.shape)} must have the shape of input_ids {tuple(x0.shape)} (one label per "
                f"position, -100 where nothing is predicted)"
            )
        maskable = labels != IGNORE_INDEX  # (b, n)
        if "attention_mask" in inputs and inputs["attention_mask"] is not None:
            maskable &= inputs["attention_mask"].bool()
        return {"x0": x0, "maskable": maskable}
    raise KeyError(
        f"a relay training batch needs 'x0' and 'maskable', or 'input_ids' and 'labels'; got keys {sorted(inputs)}"
        f" (keep TrainingArguments(remove_unused_columns=False) so the Trainer does not drop them)"
    )


def rollout_file(process_index: int, world_size: int) -> str:
    """``relay_rollout.pt`` for one process, ``relay_rollout-<rank>.pt`` per process otherwise."""
    return ROLLOUT_FILE if world_size <= 1 else f"relay_rollout-{process_index}.pt"


def last_checkpoint(output_dir: str) -> str | None:
    """The ``checkpoint-<step>`` folder with the largest step in ``output_dir`` (None when there is none)."""
    if not os.path.isdir(output_dir):
        return None
    steps = [
        (int(m.group(1)), name)
        for name in os.listdir(output_dir)
        if (m := re.fullmatch(r"checkpoint-(\d+)", name)) and os.path.isdir(os.path.join(output_dir, name))
    ]
    return os.path.join(output_dir, max(steps)[1]) if steps else None


class RelayTrainerMixin:
    """Mix in front of ``transformers.Trainer`` (or a subclass of it) to train with persistent relay rollouts.

    Keyword arguments taken by the mixin (the rest go to the Trainer class behind it):
        rollout: options of :class:`relaykit.PersistentRollout` (``method``, ``k``, ``policy``, ``loss``,
            ``seed``, ...); ``batch_size`` defaults to the Trainer's per-device batch.
        eval_loss: ``"rollout"`` (default: one K-step window from fully masked rows, the driver untouched) or
            ``"parent"`` (the ``compute_loss`` of the class behind the mixin, e.g. a library's MDLM loss; the
            relay forwards with h = 0).
    """

    def __init__(
        self, *args: Any, rollout: Mapping[str, Any] | None = None, eval_loss: EvalLoss = "rollout", **kwargs: Any
    ) -> None:
        if eval_loss not in ("rollout", "parent"):
            raise ValueError(f"eval_loss must be 'rollout' or 'parent', got {eval_loss!r}")
        super().__init__(*args, **kwargs)
        self.rollout_options = dict(rollout or {})
        self.eval_loss: EvalLoss = eval_loss
        self.rollout: PersistentRollout | None = None
        self._rollout_resume: dict[str, Any] | None = None
        unwrap_relay(self.model, caller="RelayTrainerMixin")  # the Trainer's model must be the RelayModel
        # the rollout loss is a per-batch mean: the Trainer divides it by the accumulation steps itself
        self.model_accepts_loss_kwargs = False
        # evaluation batches carry no model "labels" argument: let prediction_step ask compute_loss for the loss
        self.can_return_loss = True

    # ------------------------------------------------------------------ the loss
    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        if not model.training:  # evaluation (Trainer.prediction_step): the driver is left untouched
            if self.eval_loss == "parent":
                out = super().compute_loss(  # type: ignore[misc]
                    model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
                )
                if return_outputs and isinstance(out[1], RelayOutput):  # the Trainer slices outputs as a tuple
                    return out[0], {"logits": out[1].logits}
                return out
            batch = relay_batch(inputs)
            opts = {k: v for k, v in self.rollout_options.items() if k in ("k", "policy", "loss")}
            res = bptt_rollout(model, batch["x0"], maskable=batch["maskable"], **opts)
            return (res.loss, {}) if return_outputs else res.loss
        if self.rollout is None:
            self.rollout = PersistentRollout(
                model, **{"batch_size": int(self.args.per_device_train_batch_size), **self.rollout_options}
            )
            if self._rollout_resume is not None:
                self.rollout.load_state_dict(self._rollout_resume, skip_consumed=False)
                self._rollout_resume = None
        res = self.rollout.step(refill=relay_batch(inputs))
        return (res.loss, res) if return_outputs else res.loss

    # ------------------------------------------------------------------ saving and resuming
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's own save, then relaykit's format and the rollout state into the same folder."""
        super().save_model(output_dir, _internal_call=_internal_call)  # type: ignore[misc]
        folder = output_dir if output_dir is not None else self.args.output_dir  # type: ignore[attr-defined]
        args = self.args  # type: ignore[attr-defined]
        if args.should_save:
            unwrap_relay(self.model, caller="save_model").save_pretrained(folder)  # type: ignore[attr-defined]
        if self.rollout is not None:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, rollout_file(args.process_index, args.world_size))
            torch.save(self.rollout.state_dict(), path)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train``; when resuming, the rollout continues from the checkpoint's ``relay_rollout.pt``."""
        folder = resume_from_checkpoint
        if folder is True:
            folder = last_checkpoint(self.args.output_dir)  # type: ignore[attr-defined]
        if isinstance(folder, (str, os.PathLike)):
            path = os.path.join(folder, rollout_file(self.args.process_index, self.args.world_size))  # type: ignore[attr-defined]
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path} is missing: the checkpoint was not written by a RelayTrainerMixin trainer, so the "
                    f"persistent rollout cannot continue exactly; resume from a relay checkpoint"
                )
            self._rollout_resume = torch.load(path, weights_only=True)
            self.rollout = None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)  # type: ignore[misc]
