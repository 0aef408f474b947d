"""Stateful property tests of the cache contracts 2-5 (docs/design.md) over decoding trajectories hypothesis picks.

A machine decodes one canvas block by block with a cached runner (the one ``relaykit.generate`` uses) and, for
the exact mode, a recomputing runner side by side. Hypothesis chooses the shape (batch, prompt, block size,
number of blocks, cache mode, token shift) and the trajectory: when to start a block, which masked positions a
step commits and to which tokens, when to commit a block, and which rows to reset. After every step:

2. locality: h changed only at positions the call fed that were still masked, every other entry bit for bit;
3. committed positions are frozen: their h is the one they had when committed;
4. frozen context is relay-free: after every pass that stores context (prefill, commit pass, v1 refresh), the
   cached keys and values of committed positions equal the bare backbone's for the same tokens;
5. cache equals recompute (block-causal prefix cache): same logits and states as recomputing without a cache.

Backbones (float64): transformers Qwen2ForCausalLM under block-causal 4D masks with a DynamicCache (prefix cache,
and the Fast-dLLM v2 sub-block cache emulated on it); the Fast-dLLM v2 twin (relaykit.testing.twins) through its
own cache arguments (block-level cache, contract 5 exact, and block / sub-block cache); the LLaDA twin with Fast-dLLM
v1's list cache (prefix and dual caches: approximate by design, so contracts 2 to 4).
"""

from __future__ import annotations

import unittest
from typing import Any

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from tiny import tiny_qwen2

import relaykit
from relaykit.adapters import GenericAdapter
from relaykit.blockrun import Recompute, runner_for
from relaykit.kvcache import DecodeCall
from relaykit.testing.twins.fast_dllm_v2 import tiny_fast_dllm_v2
from relaykit.testing.twins.llada import tiny_llada

MASK = 47
TOL = dict(rtol=0.0, atol=1e-10)  # float64: cache and recompute differ only by summation order
_RELAYS: dict[Any, relaykit.RelayModel] = {}


def _relay(backend: str, shift: int) -> relaykit.RelayModel:
    """One relay per backbone and shift for the whole process, with a random (non-zero) channel."""
    key = (backend, shift)
    if key not in _RELAYS:
        if backend == "qwen2":
            model = tiny_qwen2(width=16, layers=2, dtype=torch.float64)
            relay = relaykit.attach(model, adapter=GenericAdapter(token_shift=shift), mask_token_id=MASK)
        elif backend == "fast_dllm_v2":
            model = tiny_fast_dllm_v2(vocab=48, width=16, layers=2, dtype=torch.float64)
            relay = relaykit.attach(model, mask_token_id=MASK)
        else:
            relay = relaykit.attach(tiny_llada(vocab=48, width=16, layers=2, dtype=torch.float64))
        assert relay.adapter.name == {"qwen2": "generic"}.get(backend, backend) and relay.mask_token_id == MASK
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            w = relay.channel.proj.weight
            w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * 0.5)
        _RELAYS[key] = relay
    return _RELAYS[key]


def _kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(key, value) per layer, (b, h, L, d), of an HF cache or a list cache."""
    if isinstance(cache, list):
        return cache
    return [(layer.keys, layer.values) for layer in cache.layers]


class CacheMachine(RuleBasedStateMachine):
    backend = "qwen2"
    modes: tuple[tuple[str, str], ...] = (("prefix", "block_causal"), ("sub_block", "block_causal"))
    shifts: tuple[int, ...] = (0, 1)
    aligned = False

    @initialize(data=st.data())
    def setup(self, data: st.DataObject) -> None:
        self.mode, self.attention = data.draw(st.sampled_from(self.modes), label="mode")
        self.shift = data.draw(st.sampled_from(self.shifts), label="shift")
        self.relay = _relay(self.backend, self.shift)
        self.batch = data.draw(st.integers(1, 2), label="batch")
        self.size = data.draw(st.sampled_from([2, 3, 4]), label="block")
        self.cached = None

    def _done(self) -> bool:
        return self.cached is None or (self.block is None and self.next_block == len(self.blocks))

    @precondition(lambda self: self._done())
    @rule(data=st.data())
    def prefill(self, data: st.DataObject) -> None:
        """A new canvas: prompt + masked blocks; the cached runner prefills the prompt (relay-free)."""
        if self.aligned:  # the backbone masks attention on absolute multiples of the block size
            prompt = self.size * data.draw(st.integers(self.shift, 2), label="prompt blocks")
        else:
            prompt = data.draw(st.integers(self.shift, 3), label="prompt")
        n_blocks = data.draw(st.integers(1, 3), label="blocks")
        tokens = data.draw(st.lists(st.integers(0, 29), min_size=self.batch * prompt, max_size=self.batch * prompt))
        self.prompt = prompt
        self.total = prompt + self.size * n_blocks
        self.x = torch.full((self.batch, self.total), MASK, dtype=torch.long)
        self.x[:, :prompt] = torch.tensor(tokens, dtype=torch.long).view(self.batch, prompt)
        self.blocks = [(s, s + self.size) for s in range(prompt, self.total, self.size)]
        self.segments = tuple(([(0, prompt)] if prompt else []) + self.blocks)
        common = dict(attention=self.attention, segments=self.segments, batch=self.batch, block_size=self.size)
        self.cached = runner_for(self.mode, self.attention)(self.relay, **common)
        self.exact = self.cached.exact
        self.ref = Recompute(self.relay, **common) if self.exact else None
        with torch.no_grad():
            self.cached.prepare(self.x, prompt)
        if self.attention == "block_causal" and prompt:
            self._check_cache_is_bare(prompt, range(prompt))
        self.next_block = 0
        self.block: tuple[int, int] | None = None
        self.state = self.ref_state = None  # block window (block-causal) or canvas state (bidirectional)
        self.frozen: dict[tuple[int, int], torch.Tensor] = {}  # (row, position) -> h when committed

    # ------------------------------------------------------------------ helpers
    def _masked_in(self, lo: int, hi: int) -> torch.Tensor:
        return self.x[:, lo:hi] == MASK  # (b, hi - lo)

    def _focus(self) -> tuple[int, int]:
        s, e = self.block  # type: ignore[misc]
        if self.mode != "sub_block":
            return s, e
        half = max(1, self.size // 2)
        for a in range(s, e, half):
            if bool(self._masked_in(a, min(a + half, e)).any()):
                return a, min(a + half, e)
        return s, e

    def _bare_reference(self, stop: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values the bare backbone computes for x[:, :stop] in one uncached pass."""
        call = DecodeCall(
            "prefill",
            0,
            stop,
            self.batch,
            store=True,
            segments=self.segments,
            attention=self.attention,
            block_size=self.size,
        )
        kwargs = self.relay.adapter.decode_kwargs(self.relay.backbone, call)
        with torch.no_grad(), self.relay.disabled():
            out = self.relay(self.x[:, :stop], **kwargs).output
        return _kv(out.past_key_values)

    def _check_cache_is_bare(self, stop: int, positions: Any) -> None:
        """Contract 4: the cached keys and values at ``positions`` equal the bare backbone's."""
        idx = torch.as_tensor(list(positions), dtype=torch.long)
        for (k, v), (rk, rv) in zip(_kv(self.cached.view.cache), self._bare_reference(stop)):
            torch.testing.assert_close(k[:, :, idx], rk[:, :, idx], **TOL)
            torch.testing.assert_close(v[:, :, idx], rv[:, :, idx], **TOL)

    def _as_canvas(self, state: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(hidden, filled, offset) of a state, or empty tensors for None."""
        if state is None:
            return torch.zeros(self.batch, 0, 1, dtype=torch.float64), torch.zeros(self.batch, 0, dtype=torch.bool), 0
        return state.hidden, state.filled, state.offset

    # ------------------------------------------------------------------ rules
    @precondition(lambda self: self.cached is not None and self.block is None and self.next_block < len(self.blocks))
    @rule()
    def start_block(self) -> None:
        self.block = self.blocks[self.next_block]
        self.next_block += 1
        self.cached.begin(self.x, self.block)
        if self.ref is not None:
            self.ref.begin(self.x, self.block)
        if self.attention == "block_causal":  # a new block starts from h = 0
            self.state = self.ref_state = None

    @precondition(
        lambda self: self.cached is not None and self.block is not None and self._masked_in(*self.block).any()
    )
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        s, e = self.block  # type: ignore[misc]
        focus = self._focus()
        before = self.state
        masked_before = self.x == MASK  # (b, T)
        refresh = (
            self.mode in ("prefix", "dual") and self.attention == "bidirectional" and not self.cached.view.refreshed
        )
        with torch.no_grad():
            logits, self.state = self.cached.step(self.x, self.block, focus, before)
            if self.ref is not None:
                ref_logits, self.ref_state = self.ref.step(self.x, self.block, focus, self.ref_state)
        # contract 5: same logits and state as recomputing without a cache
        if self.ref is not None:
            torch.testing.assert_close(logits, ref_logits, **TOL)
            torch.testing.assert_close(self.state.hidden, self.ref_state.hidden, **TOL)
            assert torch.equal(self.state.filled, self.ref_state.filled)
        # contract 4 for a Fast-dLLM v1 refresh: the cache it wrote holds the bare keys and values
        if refresh:
            kept = list(range(s)) + (list(range(e, self.total)) if self.mode == "dual" else [])
            if kept:
                self._check_cache_is_bare(self.total, kept)
        # contract 2: h changed only at fed, still-masked positions; every fed masked position now holds one
        lo, hi = self.cached.view.fed
        new_h, new_f, off = self._as_canvas(self.state)
        old_h, old_f, old_off = self._as_canvas(before)
        n = new_h.shape[1]
        pos = torch.arange(off, off + n)
        fed_masked = masked_before[:, pos] & ((pos >= lo) & (pos < hi))[None, :]  # (b, n)
        assert bool(new_f[fed_masked].all()), "a fed masked position got no h"
        if old_h.shape[1]:
            assert old_off == off
            m = old_h.shape[1]
            same = ~fed_masked[:, :m]
            assert torch.equal(new_h[:, :m][same], old_h[same]), "h changed outside the fed masked positions"
            assert torch.equal(new_f[:, :m][same], old_f[same])
            assert not bool(new_f[:, m:][~fed_masked[:, m:]].any())
        else:
            assert not bool(new_f[~fed_masked].any()), "h written outside the fed masked positions"
        # contract 3: committed positions keep the h they had when committed
        for (row, p), h in self.frozen.items():
            if off <= p < off + n:
                assert torch.equal(new_h[row, p - off], h), f"h of committed position {p} (row {row}) changed"
        # the trajectory: commit some masked positions of the focus in each row, to tokens hypothesis picks
        a, c = focus
        for row in range(self.batch):
            cand = (self.x[row, a:c] == MASK).nonzero().flatten().tolist()
            if not cand:
                continue
            chosen = data.draw(st.lists(st.sampled_from(cand), min_size=1, unique=True), label=f"commit row {row}")
            for i in chosen:
                token = data.draw(st.integers(0, 29), label="token")
                self.x[row, a + i] = token
                self.frozen[(row, a + i)] = new_h[row, a + i - off].clone()

    @precondition(
        lambda self: self.cached is not None and self.block is not None and not self._masked_in(*self.block).any()
    )
    @rule()
    def commit_block(self) -> None:
        s, e = self.block  # type: ignore[misc]
        with torch.no_grad():
            self.cached.end(self.x, self.block, last=False)
        if self.attention == "block_causal":  # contract 4: the commit pass stored the bare keys and values
            assert self.cached.view.cache is not None
            self._check_cache_is_bare(e, range(e))
            self.frozen = {k: h for k, h in self.frozen.items() if k[1] >= e}  # the window moves on
        self.block = None

    @precondition(lambda self: self.cached is not None and self.block is not None and self.state is not None)
    @rule(rows=st.lists(st.integers(0, 1), min_size=1, max_size=2, unique=True))
    def reset(self, rows: list[int]) -> None:
        """A per-sample restart of h (``session.reset(rows)``): both decodes forget the same rows."""
        rows = [r for r in rows if r < self.batch]
        self.state = self.state.reset(rows)
        if self.ref_state is not None:
            self.ref_state = self.ref_state.reset(rows)
        self.frozen = {k: h for k, h in self.frozen.items() if k[0] not in rows}

    # ------------------------------------------------------------------ invariants
    @invariant()
    def cache_holds_only_committed_context(self) -> None:
        if self.cached is None or self.attention != "block_causal":
            return
        held = relaykit.kvcache.cache_length(self.cached.view.cache)
        if self.block is None:
            done = self.blocks[self.next_block - 1][1] if self.next_block else self.prompt
            assert held == done
        else:
            s, e = self.block
            assert held == s or (self.mode == "sub_block" and held == e)


class Qwen2CacheMachine(CacheMachine):
    backend = "qwen2"


class FastDLLMv2CacheMachine(CacheMachine):
    backend = "fast_dllm_v2"
    shifts = (1,)
    aligned = True


class LLaDACacheMachine(CacheMachine):
    backend = "llada"
    modes = (("prefix", "bidirectional"), ("dual", "bidirectional"))
    shifts = (0,)


_steps = settings(stateful_step_count=24)
TestQwen2CacheContracts: type[unittest.TestCase] = _steps(Qwen2CacheMachine).TestCase
TestFastDLLMv2CacheContracts: type[unittest.TestCase] = _steps(FastDLLMv2CacheMachine).TestCase
TestLLaDACacheContracts: type[unittest.TestCase] = _steps(LLaDACacheMachine).TestCase
