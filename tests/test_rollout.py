"""bptt_rollout: the loss is CE on the masked positions of each step, teacher forcing writes ground truth, and the
paper's four methods (MLM, Rollout, Relay (sg), Relay) are options of the same call."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from rollout_util import VOCAB, batch, tiny_relay
from tiny import MASK_ID, TinyMDM

import relaykit
from relaykit import RelayState, bptt_rollout
from relaykit.adapters import GenericAdapter
from relaykit.policies import RandomK, Threshold, TopK, commit_step
from relaykit.shift import align_logits


def manual_rollout(relay, x0, maskable, *, k, policy, loss="mean", relay_enabled=True, shift=0):  # noqa: ANN001
    """The rollout written out step by step, independently of bptt_rollout's bookkeeping."""
    z = x0.masked_fill(maskable, MASK_ID)
    state, losses = None, []
    for _ in range(k):
        masked = (z == MASK_ID) & maskable
        if relay_enabled:
            out = relay(z, state=state)
            state, logits = out.state, out.logits
        else:
            with relay.disabled():
                logits = relay(z).logits
        aligned = align_logits(logits, shift)
        ce = F.cross_entropy(aligned[masked], x0[masked], reduction="none")
        if loss == "mean":
            losses.append(ce.mean())
        else:  # LLaDA: CE / p_mask summed, over the maskable count; p_mask = masked fraction of the row
            rows = masked.nonzero()[:, 0]
            p = (masked.sum(-1).double() / maskable.sum(-1).double())[rows]
            losses.append((ce / p).sum() / maskable[masked.any(-1)].sum())
        commit, _ = commit_step(policy, aligned.detach(), z, mask_token_id=MASK_ID, maskable=maskable)
        z = torch.where(commit, x0, z)
    return torch.stack(losses), z


@pytest.mark.parametrize("loss", ["mean", "llada"])
@pytest.mark.parametrize("relay_enabled", [True, False])
def test_losses_and_tokens_match_the_rollout_written_out(loss: str, relay_enabled: bool) -> None:
    relay = tiny_relay(dtype=torch.float64)
    x0, maskable = batch(3, 8)
    res = bptt_rollout(relay, x0, maskable=maskable, k=3, policy=TopK(2), loss=loss, relay_enabled=relay_enabled)
    expected, z = manual_rollout(relay, x0, maskable, k=3, policy=TopK(2), loss=loss, relay_enabled=relay_enabled)
    torch.testing.assert_close(res.step_losses, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(res.z, z)
    assert res.loss == res.step_losses.sum()
    assert res.k == 3


def test_llada_weighting_equals_the_mean_only_while_everything_is_masked() -> None:
    relay = tiny_relay()
    x0, maskable = batch(3, 8)
    maskable[0] = True  # rows with different maskable counts, so different p_mask after the first commits
    a = bptt_rollout(relay, x0, maskable=maskable, k=2, policy=TopK(3), loss="mean")
    b = bptt_rollout(relay, x0, maskable=maskable, k=2, policy=TopK(3), loss="llada")
    assert torch.isclose(a.step_losses[0], b.step_losses[0])  # p_mask = 1 everywhere: the same average
    assert not torch.isclose(a.step_losses[1], b.step_losses[1])


def test_teacher_forcing_commits_ground_truth_per_policy() -> None:
    relay = tiny_relay()
    x0, maskable = batch(4, 10)
    res = bptt_rollout(relay, x0, maskable=maskable, k=2, policy=TopK(3))
    m0 = maskable.sum(-1)
    assert torch.equal(res.masked[0], m0)
    assert torch.equal(res.committed[0], m0.clamp(max=3))
    assert torch.equal(res.masked[1], m0 - res.committed[0])
    still = res.z == MASK_ID
    assert torch.equal(res.z[~still], x0[~still])  # everything unmasked is ground truth
    assert torch.equal(still.sum(-1), m0 - res.committed.sum(0))
    assert not (still & ~maskable).any()


relay_for_properties = tiny_relay(width=8)


@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 9)),
    k=st.integers(1, 4),
    policy=st.sampled_from([TopK(1), TopK(3), Threshold(0.5), Threshold(0.99, max_per_step=2), RandomK(fraction=0.5)]),
    seed=st.integers(0, 2**16),
    stop_gradient=st.booleans(),
)
def test_rollout_invariants(shape: tuple[int, int], k: int, policy: object, seed: int, stop_gradient: bool) -> None:
    x0, maskable = batch(*shape, seed=seed, p_maskable=0.5)
    g = torch.Generator().manual_seed(seed)
    res = bptt_rollout(
        relay_for_properties, x0, maskable=maskable, k=k, policy=policy, stop_gradient=stop_gradient, generator=g
    )
    masked_after = res.masked - res.committed  # (k, b)
    assert torch.equal(res.masked[1:], masked_after[:-1])  # each step starts where the previous left off
    assert bool((res.committed <= res.masked).all()) and bool((res.correct <= res.committed).all())
    assert bool((res.committed[res.masked > 0] >= 1).all())  # progress: no stall
    assert torch.equal(res.finished, masked_after[-1] == 0)
    agree = (res.z == x0) | ((res.z == MASK_ID) & maskable)
    assert bool(agree.all())
    assert torch.isfinite(res.loss) and res.step_losses.shape == (k,)
    assert res.state is not None and not res.state.hidden.requires_grad


def test_a_row_finishing_inside_the_window_idles() -> None:
    relay = tiny_relay()
    x0, maskable = batch(2, 6)
    maskable[0] = False
    maskable[0, 2] = True  # one position to predict: done after the first step
    res = bptt_rollout(relay, x0, maskable=maskable, k=3, policy=TopK(1))
    assert res.committed[:, 0].tolist() == [1, 0, 0]
    assert res.masked[:, 0].tolist() == [1, 0, 0]
    assert res.finished.tolist() == [True, False]


def test_continuing_from_z_and_state_is_one_longer_window() -> None:
    relay = tiny_relay(dtype=torch.float64)
    x0, maskable = batch(2, 8)
    whole = bptt_rollout(relay, x0, maskable=maskable, k=4, policy=TopK(1))
    first = bptt_rollout(relay, x0, maskable=maskable, k=2, policy=TopK(1))
    second = bptt_rollout(relay, x0, maskable=maskable, k=2, policy=TopK(1), z=first.z, state=first.state)
    assert torch.equal(torch.cat([first.step_losses, second.step_losses]).detach(), whole.step_losses.detach())
    assert torch.equal(second.z, whole.z)
    assert torch.equal(second.state.hidden, whole.state.hidden)


def test_relay_disabled_passes_the_state_through_and_trains_no_channel() -> None:
    relay = tiny_relay()
    x0, maskable = batch(2, 8)
    state = RelayState.zeros(2, 8, 16)
    res = bptt_rollout(relay, x0, maskable=maskable, z=x0.masked_fill(maskable, MASK_ID), state=state, k=2)
    res.loss.backward()
    assert all(p.grad is not None for p in relay.channel.parameters())
    relay.zero_grad(set_to_none=True)
    res = bptt_rollout(relay, x0, maskable=maskable, z=x0.masked_fill(maskable, MASK_ID), state=state, k=2,
                       relay_enabled=False)  # fmt: skip
    res.loss.backward()
    assert res.state is not None and torch.equal(res.state.hidden, state.hidden)
    assert all(p.grad is None for p in relay.channel.parameters())
    assert relay.backbone.encoder.head.weight.grad is not None


def test_mlm_masks_a_random_ratio_per_row() -> None:
    relay = tiny_relay()
    x0, _ = batch(64, 12)
    maskable = torch.ones_like(x0, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    res = bptt_rollout(relay, x0, maskable=maskable, k=1, init="random", relay_enabled=False, generator=g)
    counts = res.masked[0]
    assert int(counts.min()) >= 1 and int(counts.max()) <= 12
    assert len(set(counts.tolist())) > 6  # the ratio varies from row to row
    again = bptt_rollout(relay, x0, maskable=maskable, k=1, init="random", relay_enabled=False,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(again.masked, res.masked)


def test_token_shift_aligns_logits_with_the_tokens_they_predict() -> None:
    torch.manual_seed(0)
    model = TinyMDM(width=16, layers=1).double()
    adapter = GenericAdapter("encoder.tok_emb", "encoder.norm", token_shift=1)
    relay = relaykit.attach(model, adapter, mask_token_id=MASK_ID)
    x0, maskable = batch(2, 8)
    maskable[:, 0] = False  # the first token has no prediction under a shift of 1
    res = bptt_rollout(relay, x0, maskable=maskable, k=2, policy=TopK(1), loss="mean")
    expected, z = manual_rollout(relay, x0, maskable, k=2, policy=TopK(1), shift=1)
    torch.testing.assert_close(res.step_losses, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(res.z, z)
    # and the prediction for token i really is read at position i - 1
    logits = relay(x0.masked_fill(maskable, MASK_ID)).logits
    ce = F.cross_entropy(logits[:, :-1][maskable[:, 1:]], x0[:, 1:][maskable[:, 1:]])
    assert math.isclose(ce.item(), expected[0].item(), rel_tol=1e-12)


def test_vocab_of_the_check_is_the_embedding() -> None:
    relay = tiny_relay()
    x0, maskable = batch(2, 8)
    x0[0, -1] = VOCAB - 2  # the largest non-mask id is fine
    bptt_rollout(relay, x0, maskable=maskable, k=1)
