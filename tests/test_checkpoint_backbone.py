"""Nothing a user trains is lost: a save after training backbone and channel restores the trained model exactly.

The README's recipe (an optimiser over ``relay.parameters()``, save, reload onto a fresh copy of the original
backbone) must give the trained logits bit for bit; the backbone's weights are saved when they changed, sharded with
an index above ``max_shard_size``, and a Hugging Face backbone's folder loads with transformers' own from_pretrained.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
import torch
from backbones import GENERIC, Backbone, logits_of
from tiny import tiny_qwen2

import relaykit
from relaykit import RelayModel
from relaykit.io import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME


def trained(bb: Backbone, *, steps: int = 3, seed: int = 0) -> tuple[RelayModel, torch.Tensor]:
    """Train backbone and channel together for a few steps (the README's recipe); returns the relay and ids."""
    relay = relaykit.attach(bb.build(), **bb.attach_kwargs)
    opt = torch.optim.Adam(relay.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, bb.vocab - 1, (2, 8), generator=g)
    ids[:, ::2] = bb.mask_id
    for _ in range(steps):
        first = relay(ids)
        loss = relay(ids, state=first.state).logits.float().logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return relay, ids


def two_step_logits(relay: RelayModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        first = relay(ids)
        return relay(ids, state=first.state).logits


@pytest.mark.parametrize("bb", GENERIC, ids=repr)
def test_trained_backbone_and_channel_reload_exactly(
    bb: Backbone, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    relay, ids = trained(bb)
    expected = two_step_logits(relay, ids)
    assert relay.changed_backbone_tensors()  # training moved the backbone
    relay.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert config["backbone_weights"] == "model.safetensors"
    fresh = bb.build()
    with caplog.at_level(logging.INFO, logger="relaykit"):
        loaded = RelayModel.from_pretrained(fresh, tmp_path / "ckpt")
    assert "loaded" in caplog.text and "backbone tensors" in caplog.text
    assert torch.equal(two_step_logits(loaded, ids), expected)
    # the loaded weights differ from the fresh backbone handed in, so the next save keeps them too
    loaded.save_pretrained(tmp_path / "again")
    again = RelayModel.from_pretrained(bb.build(), tmp_path / "again")
    assert torch.equal(two_step_logits(again, ids), expected)


def test_channel_only_training_saves_no_backbone(tmp_path: Path) -> None:
    bb = GENERIC[0]
    relay = relaykit.attach(bb.build(), **bb.attach_kwargs)
    with torch.no_grad():
        relay.channel.proj.weight.normal_()
    assert relay.changed_backbone_tensors() == []
    relay.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CARD_NAME, CONFIG_NAME, WEIGHTS_NAME]
    relay.save_pretrained(tmp_path / "always", backbone="always")
    assert (tmp_path / "always" / "model.safetensors").is_file()


def test_never_warns_with_the_number_of_changed_tensors(tmp_path: Path) -> None:
    relay, _ = trained(GENERIC[0])
    n = len(relay.changed_backbone_tensors())
    with pytest.warns(UserWarning, match=rf"{n} backbone tensor\(s\) changed since attach .* backbone='never'"):
        relay.save_pretrained(tmp_path, backbone="never")
    assert not (tmp_path / "model.safetensors").exists()
    with pytest.raises(ValueError, match="backbone must be 'auto', 'always' or 'never', got 'yes'"):
        relay.save_pretrained(tmp_path, backbone="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("bb", GENERIC[1:], ids=repr)
def test_hf_folder_loads_with_transformers_and_shards(bb: Backbone, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    relay, ids = trained(bb)
    with torch.no_grad(), relay.disabled():
        bare = logits_of(relay.backbone(ids))
    relay.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((tmp_path / s).is_file() for s in shards)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [type(relay.backbone).__name__]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, bare)
    loaded = RelayModel.from_pretrained(bb.build(), tmp_path)
    assert torch.equal(two_step_logits(loaded, ids), two_step_logits(relay, ids))
    # a later unsharded save replaces the folder as a whole: no stale shard or index stays behind
    relay.save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists() and not any(tmp_path.glob("model-0*"))


def test_tied_weights_are_written_once_and_stay_tied(tmp_path: Path) -> None:
    from safetensors import safe_open

    bb = GENERIC[2]  # Llama with tie_word_embeddings=True
    relay, ids = trained(bb)
    relay.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())  # noqa: SIM118
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    fresh = bb.build()
    RelayModel.from_pretrained(fresh, tmp_path)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # type: ignore[union-attr]


def test_weights_for_another_architecture_name_the_tensors(tmp_path: Path) -> None:
    relay, _ = trained(GENERIC[1])
    relay.save_pretrained(tmp_path)
    deeper = tiny_qwen2(layers=3)
    before = {k: v.clone() for k, v in deeper.state_dict().items()}
    with pytest.raises(ValueError, match=r"do not fit this Qwen2ForCausalLM.*missing \['model\.layers\.2\."):
        RelayModel.from_pretrained(deeper, tmp_path)
    assert not hasattr(deeper, "relay_channel")
    assert all(torch.equal(v, deeper.state_dict()[k]) for k, v in before.items())  # nothing was copied


def test_files_follow_the_umask(tmp_path: Path) -> None:
    relay, _ = trained(GENERIC[1], steps=1)
    old = os.umask(0o022)
    try:
        relay.save_pretrained(tmp_path / "ckpt", max_shard_size="20KB")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ckpt").iterdir()}
    assert set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755


def test_files_of_others_in_the_folder_are_kept(tmp_path: Path) -> None:
    relay, _ = trained(GENERIC[0], steps=1)
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train.txt").write_text("step 1")
    relay.save_pretrained(tmp_path)
    relay.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").read_text() == "{}"
    assert (tmp_path / "logs" / "train.txt").read_text() == "step 1"


def test_print_trainable_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    bb = GENERIC[0]
    relay = relaykit.attach(bb.build(), **bb.attach_kwargs)
    for p in relay.backbone.parameters():
        p.requires_grad_(False)
    for p in relay.relay_parameters():
        p.requires_grad_(True)
    channel = sum(p.numel() for p in relay.relay_parameters())
    total = sum(p.numel() for p in relay.parameters())
    relay.print_trainable_parameters()
    share = 100 * channel / total
    assert (
        capsys.readouterr().out
        == f"trainable params: {channel:,d} || all params: {total:,d} || trainable%: {share:.4f}\n"
    )
    assert relay.get_nb_trainable_parameters() == (channel, total)


def test_someone_elses_model_file_is_never_overwritten(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    relay, ids = trained(GENERIC[1])
    theirs = {k: v.detach().clone().contiguous() for k, v in relay.state_dict().items()}  # e.g. the HF Trainer's
    save_file(theirs, str(tmp_path / "model.safetensors"))
    before = (tmp_path / "model.safetensors").read_bytes()
    relay.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before  # kept as it was
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["backbone_weights"] == "relay_backbone.safetensors" and not (tmp_path / "config.json").exists()
    loaded = RelayModel.from_pretrained(GENERIC[1].build(), tmp_path)
    assert torch.equal(two_step_logits(loaded, ids), two_step_logits(relay, ids))


@pytest.mark.parametrize("example", ["plain_loop", "hf_trainer"])
def test_training_examples_save_and_reload_the_trained_model(
    example: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    folder = Path(__file__).resolve().parents[1] / "examples" / "training"
    monkeypatch.syspath_prepend(str(folder))
    spec = importlib.util.spec_from_file_location(f"example_{example}", folder / f"{example}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if example == "plain_loop":
        module.main(["--steps", "6", "--batch-size", "4", "--out", str(tmp_path / "final")])
    else:
        module.main(["--max-steps", "4", "--output-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "logits equal to the trained model's: True" in printed
    saved = json.loads((tmp_path / "final" / CONFIG_NAME).read_text())
    assert saved["backbone_weights"] is not None  # the trained backbone is in the folder


def test_fingerprint_sees_any_change() -> None:
    from relaykit.fingerprint import changed_tensors, fingerprint

    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 4), torch.nn.BatchNorm1d(4))
    reference = fingerprint(model)
    assert changed_tensors(model, reference) == []
    with torch.no_grad():
        model[0].weight[5, 7] = torch.nextafter(model[0].weight[5, 7], torch.tensor(2.0))  # one ulp
        row = model[1].weight[0].clone()
        model[1].weight[0], model[1].weight[3] = model[1].weight[3].clone(), row  # rows swapped
        model[2].num_batches_tracked += 1  # a buffer
    assert changed_tensors(model, reference) == ["0.weight", "1.weight", "2.num_batches_tracked"]
    odd = torch.nn.Module()
    odd.register_buffer("values", torch.arange(11, dtype=torch.float16)[1:])  # storage offset not 8-byte aligned
    assert fingerprint(odd) is not None
    with torch.device("meta"):
        assert fingerprint(torch.nn.Linear(2, 2)) is None  # no values: counts as changed
