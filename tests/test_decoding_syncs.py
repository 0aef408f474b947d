"""relaykit.generate reads one value on the host per step: the checks that used to read their own still hold.

The policy's two rules (only candidates, at least one per row), Fast-dLLM v2's sub-block check and the EOS "has
every row stopped?" are read with the loop's own "go on?" read; the adapter's reported positions are checked from
the plan's Python span (positions relaykit built itself, a dual cache's included, have a recorded span); the HF
decode kwargs leave out ``position_ids`` when they equal the backbone's default and build attention masks without
reading them. Each is tested here with ``debug_checks`` off (as users run it; the suite turns it on elsewhere).
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
from relaykit.policies import Policy, Threshold, TopK, _top_per_row, policy_violations, raise_policy_violation


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
    ``int()``; ``nonzero`` and boolean-mask indexing, which size their output from the values) that relaykit makes,
    except the CPU-only ids range check of the relay forward, counted apart (``ids_checks``). Reads a backbone makes
    in its own code (the LLaDA twin, like Fast-dLLM v1, finds its replaced cache columns with ``nonzero``) are
    counted apart too (``backbone``)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.ids_checks = 0
        self.backbone = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        sized_by_values = func in (torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default) or (
            func is torch.ops.aten.index.Tensor
            and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        )
        if func is torch.ops.aten._local_scalar_dense.default or sized_by_values:
            stack = traceback.extract_stack()
            caller = next(f.filename for f in reversed(stack) if f.filename != __file__ and "/torch/" not in f.filename)
            if "check_token_ids" in {frame.name for frame in stack}:
                self.ids_checks += 1
            elif "/relaykit/testing/" in caller or "/transformers/" in caller:
                self.backbone += 1
            else:
                self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("use_cache", [False, "prefix"])
def test_generate_reads_no_value_per_call_besides_its_loop_check(use_cache: str | bool) -> None:
    """A block-causal Qwen2 (HF decode kwargs, DynamicCache): besides the one ``tolist`` per step (not dispatched),
    the whole decode reads only the canvas's ids range (2), its masked prompt positions (1: a ``nonzero``) and
    whether anything is masked (1)."""
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
    assert reads.count == 4


def _bench(vocab: int = 48) -> relaykit.RelayModel:
    """A plain-PyTorch HF-convention model (list cache, position_ids, 4D masks): the generic adapter's decode path."""
    from relaykit.bench.backbone import BenchTransformer

    torch.manual_seed(0)
    return relaykit.attach(BenchTransformer(vocab, 32, 2, 4, max_len=64))


def _llada() -> relaykit.RelayModel:
    from relaykit.testing.twins.llada import tiny_llada

    return relaykit.attach(tiny_llada())


def _v2() -> relaykit.RelayModel:
    from relaykit.testing.twins.fast_dllm_v2 import tiny_fast_dllm_v2

    model = tiny_fast_dllm_v2()
    model.lm_head.register_forward_hook(lambda m, a, out: out.index_fill(-1, torch.tensor([63]), -1e4))
    return relaykit.attach(model, mask_token_id=63)


LOOPS = {
    "generic-bidirectional-none": (_bench, dict(attention="bidirectional", use_cache=False)),
    "generic-bidirectional-prefix": (_bench, dict(attention="bidirectional", use_cache="prefix")),
    "generic-bidirectional-dual": (_bench, dict(attention="bidirectional", use_cache="dual")),
    "generic-block_causal-sub_block": (_bench, dict(attention="block_causal", use_cache="sub_block", sub_block_size=2)),
    "llada-prefix": (_llada, dict(use_cache="prefix")),
    "llada-dual": (_llada, dict(use_cache="dual")),
    "fast_dllm_v2-prefix": (_v2, dict(use_cache="prefix")),
    "fast_dllm_v2-sub_block": (_v2, dict(use_cache="sub_block", sub_block_size=2)),
}


class LoopReads:
    """While open: counts :func:`relaykit.hostread.read_step` calls (the loop's reads) and every ``Tensor.tolist``
    (a read that the dispatcher does not see)."""

    def __init__(self) -> None:
        self.steps = self.tolist = 0

    def __enter__(self) -> LoopReads:
        import relaykit.decoding

        read_step, tolist = relaykit.decoding.read_step, torch.Tensor.tolist
        self._restore = (read_step, vars(torch.Tensor).get("tolist"))

        def counted_read_step(*args):  # noqa: ANN002, ANN202
            self.steps += 1
            return read_step(*args)

        def counted_tolist(t):  # noqa: ANN001, ANN202
            self.tolist += 1
            return tolist(t)

        relaykit.decoding.read_step, torch.Tensor.tolist = counted_read_step, counted_tolist
        return self

    def __exit__(self, *exc: object) -> None:
        import relaykit.decoding

        relaykit.decoding.read_step, own = self._restore
        if own is None:
            del torch.Tensor.tolist  # inherited from torch._C.TensorBase again
        else:
            torch.Tensor.tolist = own


@pytest.mark.parametrize("name", list(LOOPS))
def test_every_cache_mode_reads_one_value_per_step(name: str) -> None:
    """Besides the canvas checks (ids range 2 reads, masked prompt positions 1, "anything masked?" 1): one
    ``tolist`` per loop read (one per step, plus the read that ends each sub-block), and on CPU one ids range check
    (2 reads) per backbone call."""
    build, kw = LOOPS[name]
    relay = build()
    prompt = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=8, block_size=4, policy=Threshold(0.5), return_trajectory=True, **kw)
    calls: list[int] = []
    handle = relay.adapter.call_module(relay.backbone).register_forward_pre_hook(lambda m, a: calls.append(1))
    with torch.no_grad():
        want = relaykit.generate(relay, prompt, **kw)
        calls.clear()
        with HostReads() as reads, LoopReads() as loop:
            got = relaykit.generate(relay, prompt, **kw)
    handle.remove()
    sub_blocks = 2 * (4 // kw.get("sub_block_size", 4))  # two blocks of 4
    assert torch.equal(got.sequences, want.sequences) and not bool((got.sequences == relay.mask_token_id).any())
    once = 4 + relay.adapter.token_shift  # with a token shift the canvas's first positions are checked (1 read)
    assert reads.count == once, f"{reads.count - once} host reads besides the canvas checks"
    assert loop.tolist == loop.steps == len(got.trajectory) + sub_blocks
    assert reads.ids_checks == 2 * len(calls) and len(calls) >= int(got.nfe.max())


def test_stopping_at_eos_reads_nothing_besides_the_loop_reads() -> None:
    """Rows that hold an EOS in a decoded block get pad tokens by arithmetic; "has every row stopped?" is read with
    the next block's first loop read, which then ends decoding before the block's commit pass."""
    relay = _bench()
    prompt = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=12, block_size=4, attention="block_causal", use_cache="prefix", policy=TopK(4))
    with torch.no_grad():
        base = relaykit.generate(relay, prompt, **kw)
        stops = sorted(set(base.sequences[:, 8:12].flatten().tolist()))  # every row stops after its first block
        want_nfe = relaykit.generate(relay, prompt, eos_token_id=stops, pad_token_id=0, **kw).nfe
        with HostReads() as reads, LoopReads() as loop:
            got = relaykit.generate(relay, prompt, eos_token_id=stops, pad_token_id=0, **kw)
    assert torch.equal(got.sequences[:, :12], base.sequences[:, :12]) and bool((got.sequences[:, 12:] == 0).all())
    assert got.nfe.tolist() == want_nfe.tolist() == [3, 3]  # prefill, one step, the block's commit pass
    assert reads.count == 4 and loop.tolist == loop.steps == 3  # block 1: step, end; block 2: "all stopped"


def test_sub_block_runner_reads_its_flag_itself_when_the_caller_does_not() -> None:
    """Callers other than generate (the cache property tests) call step() without flags: it reads them itself."""
    from relaykit.blockrun import SubBlockCache

    relay = _bench()
    x = torch.randint(0, 40, (1, 12), generator=torch.Generator().manual_seed(2))
    x[:, 8:] = relay.mask_token_id
    segments = ((0, 8), (8, 12))
    with torch.no_grad():
        runner = SubBlockCache(relay, attention="block_causal", segments=segments, batch=1, block_size=4)
        runner.prepare(x, 8)
        runner.begin(x, (8, 12))
        assert runner.host_flags(x, (8, 12), (8, 10)) is None  # the block is not cached yet: nothing to decide
        runner.step(x, (8, 12), (8, 10), None)
        assert runner.host_flags(x, (8, 12), (8, 10)).tolist() == [True]  # its first token is still masked
        x[:, 8] = 5
        assert runner.host_flags(x, (8, 12), (8, 10)).tolist() == [False]
        runner.step(x, (8, 12), (8, 10), None)
    assert runner.view.fed == (8, 10)  # flags read by the step itself: the sub-block call


def test_whether_a_call_needs_an_attention_mask_is_decided_from_python_ints_as_the_mask_says() -> None:
    segments = ((0, 4), (4, 8), (8, 12))
    for attention in ("bidirectional", "block_causal"):
        for held in (0, 4, 8, 12):
            for start, stop in ((0, 4), (0, 12), (4, 8), (8, 12), (4, 12), (2, 6), (6, 6)):
                for replaced in (None, (start, stop), (8, 12)):
                    call = DecodeCall("step", start, stop, 2, cache_length=held, replaced=replaced,
                                      segments=segments, attention=attention)  # fmt: skip
                    full = call.allowed(explicit=True)  # (b, 1, q, kv) built in full
                    with HostReads() as reads:
                        got = call.allowed()
                    assert reads.count == 0
                    assert (got is None) == bool(full.all()), (attention, held, start, stop, replaced)
                    assert got is None or torch.equal(got, full)
