"""relaykit.integrations.transformers: the Trainer mixin in front of a library's Trainer subclass that overrides
compute_loss (as dllm's MDLM / BD3LM trainers do); checkpoints and save_model write relaykit's format; a run
resumed in the middle continues the persistent rollout exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers
from tiny import MASK_ID, TinyMDM

import relaykit
from relaykit import RelayModel, Threshold
from relaykit.integrations.transformers import ROLLOUT_FILE, RelayTrainerMixin, relay_batch


class LibraryMDLMTrainer(transformers.Trainer):
    """Stands in for a library's trainer (dllm's MDLMTrainer): its own masked-diffusion loss in compute_loss."""

    def __init__(self, *args: Any, mask_id: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mask_id = mask_id
        self.loss_calls = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        self.loss_calls += 1
        ids, labels = inputs["input_ids"], inputs["labels"]
        g = torch.Generator().manual_seed(self.loss_calls)
        t = torch.rand(ids.shape[0], 1, generator=g).clamp_min(0.1)  # (b, 1)
        masked = (torch.rand(ids.shape, generator=g) < t) & (labels != -100)  # (b, n)
        outputs = model(input_ids=torch.where(masked, self.mask_id, ids))
        ce = F.cross_entropy(outputs.logits.transpose(1, 2), ids, reduction="none")  # (b, n)
        loss = (ce * masked / t).sum() / masked.sum().clamp_min(1)
        return (loss, outputs) if return_outputs else loss


class RelayLibraryTrainer(RelayTrainerMixin, LibraryMDLMTrainer):
    pass


class SortData(torch.utils.data.Dataset):
    """SFT-style rows: a 3-token prompt (labels -100) then the prompt's tokens sorted, then repeated."""

    def __init__(self, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        prompt = torch.randint(0, 10, (size, 3), generator=g)
        answer = prompt.sort(-1).values
        self.ids = torch.cat([prompt, answer, answer], 1)  # (size, 9)
        self.labels = self.ids.masked_fill(torch.arange(9) < 3, -100)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def backbone() -> TinyMDM:
    torch.manual_seed(0)
    return TinyMDM()


def make(out: Path, *, eval_loss: str = "rollout", **args: Any) -> RelayLibraryTrainer:
    relay = relaykit.attach(backbone(), embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=MASK_ID)
    options = dict(
        max_steps=6, learning_rate=3e-3, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True
    )
    options.update(args)
    training = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, remove_unused_columns=False, seed=0,
        logging_steps=1, **options,
    )  # fmt: skip
    return RelayLibraryTrainer(
        model=relay,
        args=training,
        train_dataset=SortData(256),
        eval_dataset=SortData(8, seed=1),
        mask_id=MASK_ID,
        rollout={"method": "relay", "policy": Threshold(0.9), "seed": 0},
        eval_loss=eval_loss,
    )


def losses(trainer: Any) -> dict[int, float]:
    return {log["step"]: log["loss"] for log in trainer.state.log_history if "loss" in log}


def test_mixin_in_front_of_a_library_trainer_resumes_the_rollout_exactly(tmp_path: Path) -> None:
    straight = make(tmp_path / "a", save_strategy="steps", save_steps=3)
    straight.train()
    assert straight.rollout is not None and straight.rollout.steps == 6
    assert straight.loss_calls == 0  # training steps ran the relay rollout, not the library's loss
    checkpoint = tmp_path / "a" / "checkpoint-3"
    assert (checkpoint / ROLLOUT_FILE).is_file() and (checkpoint / "relay_config.json").is_file()
    loaded = RelayModel.from_pretrained(backbone(), checkpoint)  # relaykit's format in every checkpoint
    assert loaded.channel.state_dict().keys() == straight.model.channel.state_dict().keys()

    resumed = make(tmp_path / "b", save_steps=3)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.rollout.steps == 6
    assert torch.equal(resumed.rollout.z, straight.rollout.z)
    assert torch.equal(resumed.rollout.relay_state.hidden, straight.rollout.relay_state.hidden)
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    after = {s: v for s, v in losses(straight).items() if s > 3}
    assert len(after) == 3 and after == {s: v for s, v in losses(resumed).items() if s > 3}


def test_save_model_writes_a_relay_folder_that_from_pretrained_loads(tmp_path: Path) -> None:
    trainer = make(tmp_path / "run", max_steps=2)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    loaded = RelayModel.from_pretrained(backbone(), tmp_path / "final")
    trained = trainer.model.channel.state_dict()
    assert any(v.abs().sum() > 0 for v in trained.values())  # the channel moved away from zero
    for key, value in loaded.channel.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert (tmp_path / "final" / ROLLOUT_FILE).is_file()


def test_evaluation_uses_the_rollout_or_the_library_loss(tmp_path: Path) -> None:
    trainer = make(tmp_path / "run", max_steps=1)
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0 and trainer.loss_calls == 0 and trainer.rollout.steps == 1
    parent = make(tmp_path / "run2", max_steps=1, eval_loss="parent")
    metrics = parent.evaluate()
    assert metrics["eval_loss"] > 0 and parent.loss_calls == 1  # one eval batch of 8 rows


def test_bad_batches_and_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        relay_batch({"input_ids": torch.zeros(2, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match="labels"):
        relay_batch({"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": torch.zeros(2, 4)})
    batch = relay_batch(
        {"input_ids": torch.ones(1, 3, dtype=torch.long), "labels": torch.tensor([[-100, 1, 1]]),
         "attention_mask": torch.tensor([[1, 1, 0]])}
    )  # fmt: skip
    assert batch["maskable"].tolist() == [[False, True, False]]
    with pytest.raises(ValueError, match="eval_loss"):
        make(tmp_path, eval_loss="other")
    with pytest.raises(FileNotFoundError, match="relay_rollout.pt"):
        make(tmp_path / "c").train(resume_from_checkpoint=str(tmp_path))
