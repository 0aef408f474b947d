"""The twins (relaykit.testing.twins) keep their upstream family's module tree, keyword arguments and caches."""

from __future__ import annotations

import pytest
import torch

from relaykit.testing.twins.bd3lm import tiny_bd3lm
from relaykit.testing.twins.fast_dllm_v2 import tiny_fast_dllm_v2
from relaykit.testing.twins.llada import tiny_llada
from relaykit.testing.twins.mdlm import tiny_dit, tiny_hf_mdlm


def test_llada_module_tree_has_two_kinds_of_ff_out():
    model = tiny_llada(weight_tying=False)
    names = dict(model.named_modules())
    assert isinstance(names["model.transformer.wte"], torch.nn.Embedding)
    assert names["model.transformer.ff_out"] is model.get_output_embeddings()
    assert "model.transformer.blocks.0.ff_out" in names and "model.transformer.ln_f" in names
    assert model.config.hidden_size == model.config.d_model
    tied = tiny_llada(weight_tying=True)
    assert "model.transformer.ff_out" not in dict(tied.named_modules())
    assert tied.get_output_embeddings() is tied.get_input_embeddings()


def test_llada_hub_file_refuses_a_cache():
    model = tiny_llada(fast_dllm_v1=False)
    with pytest.raises(AssertionError, match="kvcache"):
        model(torch.zeros(1, 4, dtype=torch.long), use_cache=True)


def test_fast_dllm_v1_caches_keys_before_rope_and_dual_cache_writes_in_place():
    model = tiny_llada(layers=1, dtype=torch.float64)
    x = torch.randint(0, 63, (2, 12))
    full = model(x, use_cache=True)
    prefix = [(k[:, :, :5], v[:, :, :5]) for k, v in full.past_key_values]
    step = model(x[:, 5:], past_key_values=prefix, use_cache=True).logits
    torch.testing.assert_close(step, full.logits[:, 5:], rtol=0, atol=1e-12)  # one layer: the prefix cache is exact
    cache = [(k.clone(), v.clone()) for k, v in full.past_key_values]
    replace = torch.zeros_like(x, dtype=torch.bool)
    replace[:, 4:8] = True
    x2 = x.clone()
    x2[:, 4:8] = 0
    model(x2[:, 4:8], past_key_values=cache, use_cache=True, replace_position=replace)
    fresh = model(x2, use_cache=True).past_key_values
    assert torch.equal(cache[0][0][:, :, :4], full.past_key_values[0][0][:, :, :4])  # untouched outside the block
    torch.testing.assert_close(cache[0][0][:, :, 4:8], fresh[0][0][:, :, 4:8], rtol=0, atol=1e-12)


def test_fast_dllm_v2_block_cache_equals_full_block_causal_forward():
    model = tiny_fast_dllm_v2(dtype=torch.float64)
    x = torch.randint(0, 60, (2, 24))
    full = model(x, block_size=8).logits
    cache = model(x[:, :16], use_cache=True, update_past_key_values=True, block_size=8).past_key_values
    assert cache.get_seq_length() == 16
    out = model(x[:, 16:], use_cache=True, past_key_values=cache, use_block_cache=True, block_size=8)
    torch.testing.assert_close(out.logits, full[:, 16:], rtol=0, atol=1e-12)
    sub = model(
        x[:, 20:],
        use_cache=True,
        past_key_values=cache,
        use_block_cache=True,
        block_past_key_values=out.block_past_key_values,
        replace_position=4,
    ).logits
    torch.testing.assert_close(sub, full[:, 20:], rtol=0, atol=1e-12)
    assert cache.get_seq_length() == 16  # only commit passes append


def test_fast_dllm_v2_training_forward_doubles_batch_and_sequence():
    model = tiny_fast_dllm_v2().train()
    seen = []
    model.model.embed_tokens.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    x = torch.randint(0, 60, (2, 16))
    labels = x.clone()
    labels[:, :4] = -100
    out = model(x, labels=labels, mask_id=63)
    assert seen == [torch.Size([4, 32, 32])] and out.logits.shape == (4, 16, 64)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("build, prefix", [(tiny_dit, ""), (tiny_hf_mdlm, "backbone.")], ids=["DIT", "HF-MDLM"])
def test_mdlm_final_hidden_is_the_output_layer_input_and_embedding_is_a_raw_parameter(build, prefix):
    model = build()
    names = dict(model.named_modules())
    emb = names[prefix + "vocab_embed"]
    assert isinstance(emb.embedding, torch.nn.Parameter) and not isinstance(emb, torch.nn.Embedding)
    seen = []
    names[prefix + "output_layer"].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    out = model(torch.randint(0, 47, (2, 6)), torch.zeros(2))
    logits = out if isinstance(out, torch.Tensor) else out.logits
    assert logits.shape == (2, 6, 48) and seen == [torch.Size([2, 6, 32])]


def test_bd3lm_kv_cache_equals_block_causal_recompute_and_training_layout_is_2n():
    model = tiny_bd3lm(dtype=torch.float64)
    x = torch.randint(0, 47, (2, 12))
    sigma = torch.zeros(2, dtype=torch.float64)
    full = model(x, sigma, sample_mode=True).logits
    model.reset_kv_cache(2)
    for start in (0, 4):
        model(x[:, start : start + 4], sigma, sample_mode=True, store_kv=True)
    step = model(x[:, 8:], sigma, sample_mode=True).logits
    torch.testing.assert_close(step, full[:, 8:], rtol=0, atol=1e-12)
    assert model.backbone.blocks[0].cache_idx == 8
    fresh = tiny_bd3lm()
    x0 = torch.randint(0, 47, (2, 16))
    assert fresh(torch.cat([x0, x0], 1), torch.zeros(2)).logits.shape == (2, 16, 48)
