"""relaykit.inspect reports what the adapter resolved."""

from __future__ import annotations

import pytest
from backbones import BACKBONES
from tiny import MASK_ID, TinyMDM

import relaykit


def test_inspect_before_and_after_attach(capsys: pytest.CaptureFixture[str]) -> None:
    model = TinyMDM()
    report = relaykit.inspect(model, embedding="encoder.tok_emb", final_hidden="encoder.norm")
    printed = capsys.readouterr().out
    assert report["embedding"] == "encoder.tok_emb (Embedding)" and "encoder.tok_emb (Embedding)" in printed
    assert report["final_hidden"] == "encoder.norm (LayerNorm, output)"
    assert report["hidden_size"] == 16 and report["embedding_size"] == 16 and report["vocab_size"] == 32
    assert str(report["mask_token_id"]).startswith("unresolved")  # no config and no argument yet
    relay = relaykit.attach(model, embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=MASK_ID)
    after = relaykit.inspect(relay, quiet=True)
    assert after["mask_token_id"] == MASK_ID and after["attached"] is True and "kind=linear" in after["channel"]


def test_inspect_hf_getters_reports_tying() -> None:
    qwen, llama = BACKBONES[1].build(), BACKBONES[2].build()
    assert relaykit.inspect(qwen, quiet=True)["tied_embeddings"] is False
    report = relaykit.inspect(llama, quiet=True)
    assert report["tied_embeddings"] is True and report["final_hidden"] == "lm_head (Linear, input)"
    assert report["mask_token_id"] == 47
