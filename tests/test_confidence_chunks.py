"""confidence_and_prediction works through positions in chunks (to bound the float32 copies of a training
window); every chunk size gives exactly the all-at-once result."""

from __future__ import annotations

import pytest
import torch

from relaykit import policies


def all_at_once(logits: torch.Tensor, mask_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.float().clone()
    logits[..., mask_token_id] = float("-inf")
    return logits.softmax(-1).max(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 37, 1000, 1 << 22])
def test_chunked_confidence_equals_all_at_once(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, chunk: int) -> None:
    monkeypatch.setattr(policies, "CONFIDENCE_CHUNK", chunk)
    logits = (torch.randn(3, 11, 50, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    confidence, prediction = policies.confidence_and_prediction(logits, mask_token_id=7)
    expected_c, expected_p = all_at_once(logits, 7)
    assert torch.equal(confidence, expected_c) and torch.equal(prediction, expected_p)
    assert not bool((prediction == 7).any())
    assert confidence.shape == (3, 11)


def test_empty_batch() -> None:
    confidence, prediction = policies.confidence_and_prediction(torch.zeros(0, 4, 9), mask_token_id=2)
    assert confidence.shape == prediction.shape == (0, 4)
