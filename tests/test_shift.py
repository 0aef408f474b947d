"""Contract 10: the token-shift rule is decided in one place (relaykit.shift) and every user of it agrees."""

from __future__ import annotations

import pytest
import torch
from tiny import MASK_ID, tiny_qwen2

import relaykit
from relaykit.adapters import GenericAdapter
from relaykit.shift import align_logits, check_first_unmasked, check_token_shift, gather_aligned


@pytest.mark.parametrize("bad", [2, -1, True, 1.0, "1"])
def test_contract10_token_shift_is_0_or_1_everywhere(bad: object) -> None:
    with pytest.raises(ValueError, match="token_shift must be 0 or 1"):
        check_token_shift(bad)
    with pytest.raises(ValueError, match="token_shift must be 0 or 1"):
        GenericAdapter(token_shift=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token_shift must be 0 or 1"):
        align_logits(torch.zeros(1, 3, 2), bad)  # type: ignore[arg-type]
    assert [check_token_shift(s) for s in (0, 1)] == [0, 1]


def test_contract10_first_positions_stay_unmasked_in_loss_training_and_decoding() -> None:
    masked = torch.tensor([[True, False, True]])
    check_first_unmasked(masked, 0, what="x")  # no shift: nothing to check
    with pytest.raises(ValueError, match="position 0 is masked but the backbone has a token shift of 1"):
        check_first_unmasked(masked, 1, what="x")
    logits = torch.arange(6.0).view(1, 3, 2)  # (b, n, V)
    with pytest.raises(ValueError, match="token shift of 1"):
        gather_aligned(logits, masked, 1)
    later = torch.tensor([[False, True, True]])  # tokens 1 and 2 are predicted at positions 0 and 1
    assert torch.equal(gather_aligned(logits, later, 1), logits[0, :2])
    relay = relaykit.attach(tiny_qwen2(), GenericAdapter(token_shift=1), mask_token_id=MASK_ID)
    x0 = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(0))
    maskable = torch.ones(2, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match="position 0 is masked but the backbone has a token shift of 1"):
        relaykit.bptt_rollout(relay, x0, maskable=maskable)
    canvas = x0.clone()
    canvas[:, 0] = MASK_ID
    with pytest.raises(ValueError, match="position 0 is masked but the backbone has a token shift of 1"):
        relaykit.generate(relay, canvas, max_new_tokens=0)
