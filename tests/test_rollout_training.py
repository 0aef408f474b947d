"""Rollouts in real training set-ups: HF gradient checkpointing, bf16 autocast, frozen backbones, torch.compile,
a plain PyTorch loop and the Hugging Face Trainer (the examples in examples/training)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from rollout_util import batch, tiny_relay
from tiny import tiny_llama_bidirectional, tiny_qwen2

import relaykit
from relaykit import TopK, bptt_rollout

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "training"


def load(name: str):  # noqa: ANN201
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


def two_windows(relay: relaykit.RelayModel, **kwargs: object) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 47, (2, 10), generator=g)
    maskable = torch.ones_like(x0, dtype=torch.bool)
    first = bptt_rollout(relay, x0, maskable=maskable, k=2, policy=TopK(2), backbone_kwargs={"use_cache": False})
    res = bptt_rollout(relay, x0, maskable=maskable, k=2, policy=TopK(2), z=first.z, state=first.state,
                       backbone_kwargs={"use_cache": False}, **kwargs)  # fmt: skip
    res.loss.backward()
    return res.loss.detach()


def test_hf_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        model = tiny_llama_bidirectional().double().train()
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        relay = relaykit.attach(model)
        torch.nn.init.normal_(relay.channel.proj.weight, std=0.3)
        two_windows(relay)
        grads.append({n: p.grad for n, p in relay.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-12, atol=1e-12, msg=name)


def test_bf16_autocast_and_a_frozen_backbone() -> None:
    relay = relaykit.attach(tiny_qwen2().train())
    for p in relay.backbone.parameters():
        p.requires_grad_(False)
    for p in relay.relay_parameters():
        p.requires_grad_(True)
    torch.nn.init.normal_(relay.channel.proj.weight, std=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = two_windows(relay)
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in relay.relay_parameters())
    assert all(p.grad is None for n, p in relay.backbone.named_parameters() if "relay_channel" not in n)


def test_torch_compile_matches_eager() -> None:
    """Compile the whole RelayModel (dynamo traces the relay hooks; AOT autograd builds the backward)."""
    results = []
    for compiled in (False, True):
        relay = tiny_relay()
        model = torch.compile(relay, backend="aot_eager") if compiled else relay
        x0, maskable = batch(3, 8)
        first = bptt_rollout(model, x0, maskable=maskable, k=2, policy=TopK(2))
        res = bptt_rollout(model, x0, maskable=maskable, k=2, policy=TopK(2), z=first.z, state=first.state)
        res.loss.backward()
        results.append((res.step_losses.detach(), [p.grad for p in relay.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b)


def test_plain_loop_example_learns_and_resumes_exactly(tmp_path: Path) -> None:
    plain = load("plain_loop")
    straight = plain.main(["--steps", "40", "--batch-size", "8", "--log-every", "1000"])
    assert sum(straight[-10:]) < sum(straight[:10])  # it learns the toy task
    ckpt = tmp_path / "ckpt.pt"
    plain.main(["--steps", "20", "--batch-size", "8", "--checkpoint", str(ckpt), "--log-every", "1000"])
    resumed = plain.main(["--steps", "40", "--batch-size", "8", "--checkpoint", str(ckpt), "--resume",
                          "--log-every", "1000"])  # fmt: skip
    assert resumed == straight[20:]


def test_hf_trainer_mixin_trains_and_resumes_exactly(tmp_path: Path) -> None:
    hf = load("hf_trainer")
    straight = hf.make_trainer(str(tmp_path / "a"), max_steps=6, batch_size=4, save_strategy="steps", save_steps=3,
                               logging_steps=1)  # fmt: skip
    straight.train()
    assert straight.rollout is not None and straight.rollout.steps == 6
    losses = [log["loss"] for log in straight.state.log_history if "loss" in log]
    assert losses and all(loss > 0 for loss in losses)
    checkpoint = tmp_path / "a" / "checkpoint-3"
    assert (checkpoint / hf.DRIVER_FILE).is_file()
    resumed = hf.make_trainer(str(tmp_path / "b"), max_steps=6, batch_size=4)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.rollout.steps == 6 and torch.equal(resumed.rollout.z, straight.rollout.z)
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
