"""relaykit.generate reads one value on the host per step: the checks that used to read their own still hold.

The policy's two rules (only candidates, at least one per row) are read with the loop's own "go on?" read; the
adapter's reported positions are checked from the plan's Python span; the HF decode kwargs leave out
``position_ids`` when they equal the backbone's default. Each is tested here with ``debug_checks`` off (as users
run it; the suite turns it on elsewhere).
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Iterator

import pytest
import torch
from tiny import TinyMDM, tiny_qwen2
from torch.utils._python_dispatch import TorchDispatchMode

import relaykit
from relaykit.adapters import GenericAdapter
from relaykit.kvcache import DecodeCall
from relaykit.model import RelayCore
from relaykit.policies import Policy, Threshold, _top_per_row, policy_violations, raise_policy_violation


@pytest.fixture(autouse=True)
def no_debug_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(RelayCore, "debug_checks", False)
    yield


class CommitsNothing(Policy):
    def __call__(self, confidence, candidates, generator=None):  # noqa: ANN001, ANN204
        return torch.zeros_like(candidates)


class RecommitsTheFirst(Policy):
    """One candidate per step, plus the block's first position every step (no longer a candidate from step 2)."""

    def __call__(self, confidence, candidates, generator=None):  # noqa: ANN001, ANN204
        commit = _top_per_row(confidence, candidates, torch.ones(candidates.shape[0], dtype=torch.long))
        commit[:, 0] = True
        return commit


def _mdm() -> relaykit.RelayModel:
    torch.manual_seed(0)
    return relaykit.attach(TinyMDM(max_len=64), embedding="encoder.tok_emb", final_hidden="encoder.norm",
                           mask_token_id=31)  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (CommitsNothing(), "committed nothing in a row that still has masked positions; it would stall"),
        (RecommitsTheFirst(), "committed a position that was not a candidate"),
    ],
)
def test_generate_still_stops_a_policy_that_breaks_a_rule(policy: Policy, message: str) -> None:
    prompt = torch.randint(0, 30, (2, 4), generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match=message):
        relaykit.generate(_mdm(), prompt, max_new_tokens=8, block_size=4, policy=policy)


def test_policy_violations_flags_each_rule() -> None:
    candidates = torch.tensor([[True, True, False], [False, False, False]])
    assert policy_violations(torch.tensor([[True, False, False], [False] * 3]), candidates).tolist() == [False, False]
    assert policy_violations(torch.tensor([[True, False, True], [False] * 3]), candidates).tolist() == [True, False]
    assert policy_violations(torch.zeros(2, 3, dtype=torch.bool), candidates).tolist() == [False, True]
    raise_policy_violation("P", False, False)  # nothing broken: no error
    with pytest.raises(RuntimeError, match="'P' committed nothing"):
        raise_policy_violation("P", False, True)


def test_at_least_one_adds_the_first_best_candidate_where_a_row_is_empty() -> None:
    g = torch.Generator().manual_seed(0)
    confidence = torch.rand(64, 12, generator=g).round(decimals=1)  # many ties
    candidates = torch.rand(64, 12, generator=g) < 0.5
    candidates[0] = False  # a row with nothing to commit stays empty
    commit = Threshold(1.0)(confidence, candidates)  # nobody reaches 1.0: only the added best ones
    want = _top_per_row(confidence, candidates, torch.ones(64, dtype=torch.long))  # the stable-sort reference
    assert torch.equal(commit, want)
    assert not commit[0].any() and torch.equal(commit.sum(-1), candidates.any(-1).long())


def test_hf_decode_kwargs_pass_position_ids_only_when_they_differ_from_the_default() -> None:
    from transformers import DynamicCache

    relay = relaykit.attach(tiny_qwen2(), mask_token_id=47)
    with torch.no_grad():
        cache = DynamicCache()
        relay(torch.randint(0, 46, (1, 6)), past_key_values=cache, use_cache=True)  # 6 cached positions
    step = DecodeCall("step", 6, 10, 1, cache=cache, cache_length=6, attention="block_causal", segments=((0, 6),))
    kwargs = relay.adapter.decode_kwargs(relay.backbone, step)
    assert "position_ids" not in kwargs and kwargs["use_cache"] is True  # the default: cache length + arange
    replaced = dataclasses.replace(step, start=2, stop=6, replaced=(2, 6))  # re-feeds cached columns 2..5
    assert torch.equal(relay.adapter.decode_kwargs(relay.backbone, replaced)["position_ids"], torch.arange(2, 6)[None])


def test_an_adapter_whose_span_is_off_is_caught_without_reading_the_positions() -> None:
    class Off(GenericAdapter):
        def plan_call(self, binding, ids, args, kwargs, *, mask_token_id):  # noqa: ANN001, ANN201
            plan = super().plan_call(binding, ids, args, kwargs, mask_token_id=mask_token_id)
            lo, end = plan.span
            return dataclasses.replace(plan, positions=plan.positions + 1, span=(lo + 1, end + 1))

    relay = relaykit.attach(TinyMDM(max_len=64), adapter=Off("encoder.tok_emb", "encoder.norm"), mask_token_id=31)
    with pytest.raises(RuntimeError, match=r"reports positions 1\.\.12 for a call that feeds positions 0\.\.11"):
        relaykit.generate(relay, torch.randint(0, 30, (1, 4)), max_new_tokens=8)


class HostReads(TorchDispatchMode):
    """Counts the reads of a tensor value on the host that go through the dispatcher (``.item()``, ``bool()``,
    ``int()``), except the CPU-only ids range check of the relay forward."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func is torch.ops.aten._local_scalar_dense.default:
            names = {frame.name for frame in traceback.extract_stack()}
            self.count += "check_token_ids" not in names
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("use_cache", [False, "prefix"])
def test_generate_reads_no_value_per_call_besides_its_loop_check(use_cache: str | bool) -> None:
    """A block-causal Qwen2 (HF decode kwargs, DynamicCache): besides the one ``tolist`` per step (not dispatched),
    the whole decode reads only the canvas's ids range (2) and whether anything is masked (1)."""
    torch.manual_seed(0)
    relay = relaykit.attach(tiny_qwen2(), mask_token_id=47)
    prompt = torch.randint(0, 46, (2, 4), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=8, block_size=4, attention="block_causal", policy=Threshold(0.5), use_cache=use_cache)
    with torch.no_grad():
        want = relaykit.generate(relay, prompt, **kw)
        reads = HostReads()
        with reads:
            got = relaykit.generate(relay, prompt, **kw)
    assert torch.equal(got.sequences, want.sequences) and int(got.nfe.max()) >= 4
    assert reads.count == 3
