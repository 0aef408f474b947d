"""The attention kind comes from the model (relaykit.causality): inspect reports it, generate refuses to guess on a
causal model and passes explicit masks when told the kind; inspect(model, mask_token_id=...) and inspect(relay)."""

from __future__ import annotations

import pytest
import torch
from tiny import TinyMDM, tiny_llama_bidirectional, tiny_qwen2

import relaykit
from relaykit.causality import native_attention


def tiny_llama_causal() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def runs_causally(model: torch.nn.Module) -> bool:
    """Ground truth: position 0's logits ignore a change of the last token."""
    a, b = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 3, 9]])
    with torch.no_grad():
        return torch.equal(model(a).logits[0, 0], model(b).logits[0, 0])


@pytest.mark.parametrize("build", [tiny_qwen2, tiny_llama_causal, tiny_llama_bidirectional], ids=lambda f: f.__name__)
def test_native_attention_matches_how_the_model_runs(build) -> None:  # noqa: ANN001
    model = build()
    expected = "causal" if runs_causally(model) else "bidirectional"
    assert native_attention(model) == expected
    relay = relaykit.attach(model, mask_token_id=47)
    assert relaykit.inspect(relay, quiet=True)["attention"] == expected
    assert relaykit.inspect(model, mask_token_id=47, quiet=True)["attention"] == expected


def test_generate_on_a_causal_model_needs_attention_and_then_passes_masks() -> None:
    relay = relaykit.attach(tiny_qwen2(), mask_token_id=47)
    prompt = torch.randint(0, 40, (2, 4), generator=torch.Generator().manual_seed(0))
    for use_cache in (False, True):
        with pytest.raises(ValueError, match="attends causally.*attention='block_causal'"):
            relaykit.generate(relay, prompt, max_new_tokens=4, block_size=4, use_cache=use_cache)
    masks: list[torch.Tensor] = []
    hook = relay.backbone.register_forward_pre_hook(
        lambda m, a, kw: masks.append(kw.get("attention_mask")), with_kwargs=True
    )
    try:
        relaykit.generate(relay, prompt, max_new_tokens=4, block_size=4, attention="bidirectional")
    finally:
        hook.remove()
    assert masks and all(m is not None and m.dim() == 4 and bool(m.all()) for m in masks)  # explicit, all visible


def test_inspect_takes_a_mask_id_and_shows_the_resolved_one() -> None:
    model = TinyMDM()
    report = relaykit.inspect(model, embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=31,
                              quiet=True)  # fmt: skip
    assert report["mask_token_id"] == 31
    with pytest.raises(ValueError, match="outside the embedding's vocabulary of 32"):
        relaykit.inspect(model, embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=40)
    relay = relaykit.attach(model, embedding="encoder.tok_emb", final_hidden="encoder.norm", mask_token_id=30)
    assert relaykit.inspect(relay, quiet=True)["mask_token_id"] == 30
