"""The defects a probe of bad inputs found: each now gets a clear error (what was expected, what came) or the
right behaviour. Checkpoint-format defects are in test_relay_config.py, save/load faults in test_atomic_save.py."""

from __future__ import annotations

import pytest
import torch
from rollout_util import batch, tiny_relay
from tiny import MASK_ID, TinyMDM

import relaykit
from relaykit import PersistentRollout, RelayState
from relaykit.bench.__main__ import main as bench_main
from relaykit.policies import Oracle, RandomK, Threshold, TopK

GENERIC = {"embedding": "encoder.tok_emb", "final_hidden": "encoder.norm", "mask_token_id": MASK_ID}


def test_state_of_the_wrong_width() -> None:
    relay = tiny_relay()
    ids = torch.full((2, 6), MASK_ID)
    narrow = RelayState.zeros(2, 6, 8)
    message = r"relay state has hidden width 8 but this relay's channel reads width 16"
    with pytest.raises(ValueError, match=message):
        relay(ids, state=narrow)
    with pytest.raises(ValueError, match=message):
        with relay.session(state=narrow):
            pass


def test_session_state_must_be_a_relay_state() -> None:
    relay = tiny_relay()
    with pytest.raises(TypeError, match=r"state must be a RelayState or None, got Tensor"):
        with relay.session(state=torch.zeros(2, 6, 16)):  # type: ignore[arg-type]
            pass


def test_driver_checkpoint_over_a_model_of_another_width() -> None:
    data = [batch(2, 6, seed=i) for i in range(4)]
    driver = PersistentRollout(tiny_relay(width=16), data, batch_size=2)
    driver.step()
    other = PersistentRollout(tiny_relay(width=24), data, batch_size=2)
    with pytest.raises(ValueError, match=r"relay state has hidden width 16 but this model's channel reads width 24"):
        other.load_state_dict(driver.state_dict())


def test_changed_policy_on_resume_is_refused() -> None:
    data = [batch(2, 6, seed=i) for i in range(4)]
    driver = PersistentRollout(tiny_relay(), data, batch_size=2, policy=TopK(2))
    driver.step()
    other = PersistentRollout(tiny_relay(), data, batch_size=2, policy=TopK(3))
    with pytest.raises(ValueError, match=r"policy: saved 'TopK\(k=2\)', this driver 'TopK\(k=3\)'.*set driver\.policy"):
        other.load_state_dict(driver.state_dict())


def test_token_ids_outside_the_vocabulary() -> None:
    relay = tiny_relay()
    message = r"input_ids hold token ids 0\.\.40 but the embedding has a vocabulary of 32 \(ids 0\.\.31\)"
    ids = torch.tensor([[0, 40, MASK_ID]])
    with pytest.raises(ValueError, match=message):
        relay(ids)
    with pytest.raises(ValueError, match=message):
        relaykit.generate(relay, ids[:, :2], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"token ids -1\.\.0"):
        relay(torch.tensor([[-1, 0]]))


def test_float_prompt_is_a_dtype_error() -> None:
    with pytest.raises(TypeError, match=r"input_ids must hold integer token ids, got dtype torch\.float32"):
        relaykit.generate(tiny_relay(), torch.zeros(2, 3), max_new_tokens=2)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TopK(2.5), r"TopK\.k must be an int >= 1, got float 2\.5"),
        (lambda: TopK(True), r"TopK\.k must be an int >= 1, got bool True"),
        (lambda: RandomK(k=1.5), r"RandomK\.k must be an int >= 1, got float 1\.5"),
        (lambda: Threshold(0.9, max_per_step=2.0), r"Threshold\.max_per_step must be an int >= 1, got float 2\.0"),
        (lambda: Oracle(torch.zeros(1, 3), k=1.5), r"Oracle\.k must be an int >= 1, got float 1\.5"),
    ],
)
def test_policy_counts_are_not_rounded(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_driver_k_is_not_rounded() -> None:
    with pytest.raises(ValueError, match=r"k \(denoising steps per window\) must be an int >= 1, got 1\.7"):
        PersistentRollout(tiny_relay(), [batch(2, 6)], k=1.7)  # type: ignore[arg-type]


def test_empty_batch() -> None:
    relay = tiny_relay()
    empty = torch.zeros(0, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"input_ids has no rows \(shape \(0, 6\)\)"):
        relay(empty)
    with pytest.raises(ValueError, match=r"x0 is empty \(shape \(0, 6\)\); a rollout needs at least one row"):
        relaykit.bptt_rollout(relay, empty, maskable=empty.bool(), k=2)


@pytest.mark.parametrize(
    ("argv", "flag"), [(["memory", "--batch", "0"], "--batch"), (["decode", "--repeats", "0"], "--repeats")]
)
def test_bench_counts_must_be_positive(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        bench_main(argv)
    assert info.value.code == 2
    assert f"argument {flag}: expected a whole number >= 1, got 0" in capsys.readouterr().err


def test_meta_device_attach_keeps_zero_init_through_to_empty() -> None:
    with torch.device("meta"):
        model = TinyMDM().eval()
    relay = relaykit.attach(model, **GENERIC)
    source = TinyMDM().eval()
    model.to_empty(device="cpu")
    model.load_state_dict(source.state_dict(), strict=False)  # the backbone's keys only, as HF loaders do
    assert relay.channel.proj.weight.abs().max().item() == 0.0
    assert torch.equal(relay.channel.norm.weight, torch.ones(16))
    ids = torch.full((2, 6), MASK_ID)
    with torch.no_grad():
        first = relay(ids)
        assert torch.equal(relay(ids, state=first.state).logits, source(ids))  # relay is the identity again


def test_nan_at_unfilled_positions_does_not_poison_the_gradient() -> None:
    relay = tiny_relay()
    hidden = torch.randn(2, 6, 16)
    filled = torch.zeros(2, 6, dtype=torch.bool)
    filled[:, :3] = True
    hidden[~filled] = float("nan")
    hidden[0, 4] = float("inf")
    out = relay(torch.full((2, 6), MASK_ID), state=RelayState(hidden, filled))
    assert torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    grads = [p.grad for p in relay.channel.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert relay.channel.proj.weight.grad.abs().sum() > 0  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["linear", "mlp", "gated"])
def test_without_autograd_unused_positions_give_the_same_logits_without_the_zeroing_pass(kind: str) -> None:
    """Under no_grad the relay forward skips zeroing h at positions that take no relay (the channel maps each
    position on its own and they are dropped): the logits equal those of the forward with autograd, bit for bit,
    even with NaN / inf in h there."""
    torch.manual_seed(0)
    relay = relaykit.attach(TinyMDM(), kind=kind, **GENERIC)
    with torch.no_grad():
        for p in relay.channel.parameters():
            p.normal_(0.0, 0.3)
    hidden = torch.randn(2, 6, 16)
    filled = torch.zeros(2, 6, dtype=torch.bool)
    filled[:, :3] = True
    hidden[~filled] = float("nan")
    hidden[0, 4] = float("inf")
    ids = torch.full((2, 6), MASK_ID)
    ids[1] = 5  # a row with no mask: relay-free, its h (filled) takes no relay either
    state = RelayState(hidden, filled)
    with_grad = relay(ids, state=state).logits
    with torch.no_grad():
        without = relay(ids, state=state).logits
    assert torch.isfinite(without).all() and torch.equal(without, with_grad.detach())
    assert not torch.equal(without[0], relay.backbone(ids)[0])  # the channel does act on the filled positions
