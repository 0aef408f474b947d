"""Dream's own sampler (``diffusion_generate``, the twin of Dream-org's ``generation_utils.py``) inside a relay
session: contracts 1 to 3 on the Dream twin, with left padding and every remasking algorithm; relaykit.generate
on Dream (token shift, padded batches)."""

from __future__ import annotations

import pytest
import torch
from backbones import randomise_channel
from recorder import Recorder, check_committed_frozen, check_locality

import relaykit
from relaykit.testing.twins.dream import tiny_dream

MASK = 63


def prompt(b: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 60, (b, n), generator=torch.Generator().manual_seed(seed))


def columns(call) -> torch.Tensor:  # noqa: ANN001
    """Dream feeds the whole canvas each step: the positions are the columns 0 .. N-1."""
    b, q = call.ids.shape
    return torch.arange(q).expand(b, q)


@pytest.mark.parametrize("alg", ["origin", "maskgit_plus", "topk_margin", "entropy"])
def test_contract1_zero_initialised_relay_leaves_diffusion_generate_unchanged(alg: str) -> None:
    model = tiny_dream()
    ids, keep = prompt(2, 5, 0), torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    kw = dict(attention_mask=keep, max_new_tokens=8, steps=8, alg=alg, temperature=0.0)
    bare = model.diffusion_generate(ids, generator=torch.Generator().manual_seed(0), **kw)
    relay = relaykit.attach(model)
    assert relay.adapter.name == "dream" and relay.mask_token_id == MASK and relay.adapter.token_shift == 1
    with relay.session() as session:
        out = model.diffusion_generate(ids, generator=torch.Generator().manual_seed(0), **kw)
        assert session.nfe == 8 and session.state is not None
    assert torch.equal(out, bare)


@pytest.mark.parametrize("alg", ["origin", "entropy"])
def test_contracts_2_3_locality_and_committed_positions_frozen(alg: str) -> None:
    model = tiny_dream()
    relay = relaykit.attach(model)
    randomise_channel(relay)
    ids, keep = prompt(2, 5, 1), torch.tensor([[1] * 5, [0, 1, 1, 1, 1]])
    with relay.session() as session, Recorder(relay, session) as rec:
        x = model.diffusion_generate(ids, attention_mask=keep, max_new_tokens=8, steps=6, alg=alg,
                                     generator=torch.Generator().manual_seed(0))  # fmt: skip
        final = session.state
    assert len(rec.calls) == 6 and x.shape == (2, 13)
    assert check_locality(rec.calls, columns, mask_id=MASK) > 0
    assert check_committed_frozen(rec.calls, columns, final, mask_id=MASK) > 0
    bare = model.diffusion_generate(ids, attention_mask=keep, max_new_tokens=8, steps=6, alg=alg,
                                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert not torch.equal(x, bare)  # the trained-looking relay does change Dream's decoding


def test_relaykit_generate_on_dream_aligns_the_token_shift_and_takes_padding() -> None:
    model = tiny_dream()
    relay = relaykit.attach(model)
    ids = prompt(1, 5, 2)
    res = relaykit.generate(relay, ids, max_new_tokens=8, block_size=4, policy=relaykit.TopK(1), return_trajectory=True)
    assert int(res.nfe[0]) == 8 and not bool((res.sequences == MASK).any())
    with torch.no_grad():  # the first step's token follows Dream's shifted logits (position P from P - 1)
        logits = model(torch.cat([ids, torch.full((1, 8), MASK)], 1)).logits
    shifted = torch.cat([logits[:, :1], logits[:, :-1]], 1)[0, 5:9]
    shifted[:, MASK] = -torch.inf
    first = res.order[0, 5:9] == 0
    assert torch.equal(res.sequences[0, 5:9][first], shifted.argmax(-1)[first])
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids[:, 2:]], 1)
    both = torch.cat([ids, padded])
    keep = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    batched = relaykit.generate(relay, both, attention_mask=keep, max_new_tokens=8, block_size=4,
                                policy=relaykit.TopK(1))  # fmt: skip
    alone = relaykit.generate(relay, ids[:, 2:], max_new_tokens=8, block_size=4, policy=relaykit.TopK(1))
    assert torch.equal(batched.sequences[0], res.sequences[0])
    assert torch.equal(batched.sequences[1, 5:], alone.sequences[0, 3:])
    with pytest.raises(ValueError, match="does not support use_cache"):
        relaykit.generate(relay, ids, max_new_tokens=8, block_size=4, use_cache="prefix")
