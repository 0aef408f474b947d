"""RelayState: functional updates, windows, resets, extension and autograd through writes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from relaykit import RelayState


@given(st.integers(1, 3), st.integers(1, 10), st.integers(0, 5), st.integers(0, 2**16))
def test_write_then_gather_roundtrip_and_leaves_old_state_untouched(b: int, n: int, offset: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    s = RelayState(torch.randn(b, n, 4, generator=g), torch.rand(b, n, generator=g) < 0.5, offset)
    old_hidden, old_filled = s.hidden.clone(), s.filled.clone()
    q = int(torch.randint(1, n + 1, (1,), generator=g))
    pos = torch.stack([torch.randperm(n, generator=g)[:q] + offset for _ in range(b)])  # (b, q)
    values = torch.randn(b, q, 4, generator=g)
    where = torch.rand(b, q, generator=g) < 0.5
    s2 = s.write(pos, values, where)
    assert torch.equal(s.hidden, old_hidden) and torch.equal(s.filled, old_filled)  # functional
    h, f = s2.gather(pos)
    assert torch.equal(h[where], values[where])
    assert torch.equal(h[~where], s.gather(pos)[0][~where])
    assert bool(f[where].all())
    untouched = torch.ones(b, n, dtype=torch.bool)
    untouched.scatter_(1, pos - offset, False)
    assert torch.equal(s2.hidden[untouched], s.hidden[untouched])


def test_window_reset_extend_select() -> None:
    s = RelayState(torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2), torch.ones(2, 6, dtype=torch.bool))
    w = s.window(2, 5)
    assert w.offset == 2 and w.length == 3 and torch.equal(w.hidden, s.hidden[:, 2:5])
    r = s.reset([0])
    assert torch.equal(r.hidden[0], torch.zeros(6, 2)) and torch.equal(r.hidden[1], s.hidden[1])
    assert not bool(r.filled[0].any()) and bool(r.filled[1].all())
    e = s.extend(9)
    assert e.length == 9 and torch.equal(e.hidden[:, :6], s.hidden) and not bool(e.filled[:, 6:].any())
    assert s.extend(3) is s
    assert torch.equal(s.select([1]).hidden, s.hidden[1:])
    assert s.reset(torch.tensor([False, True])).filled[0].all()


def test_gradients_flow_through_writes_and_stop_at_detach() -> None:
    base = RelayState.zeros(1, 4, 3)
    values = torch.randn(1, 2, 3, requires_grad=True)
    s = base.write(torch.tensor([[1, 3]]), values)
    s.hidden.sum().backward()
    assert values.grad is not None and torch.equal(values.grad, torch.ones(1, 2, 3))
    assert not s.detach().hidden.requires_grad


def test_select_accepts_a_bool_row_mask() -> None:
    s = RelayState(torch.arange(3.0).view(3, 1, 1).expand(3, 2, 1).clone(), torch.ones(3, 2, dtype=torch.bool))
    assert s.select(torch.tensor([True, False, True])).hidden[:, 0, 0].tolist() == [0.0, 2.0]
    assert s.select([2]).hidden[:, 0, 0].tolist() == [2.0]
    with pytest.raises(ValueError, match=r"bool row mask must have shape \(3,\)"):
        s.select(torch.tensor([True, False]))
    with pytest.raises(IndexError, match=r"rows \[3\] are outside the batch of 3"):
        s.select([3])


@given(st.integers(1, 3), st.integers(1, 8), st.integers(0, 4), st.integers(0, 8), st.integers(0, 2**16))
def test_write_range_equals_write_at_the_same_positions(b: int, n: int, offset: int, cut: int, seed: int) -> None:
    """The slice path (and its shortcut when the write covers the whole state) gives ``write``'s state bit for bit,
    and leaves the old state untouched."""
    g = torch.Generator().manual_seed(seed)
    old = RelayState(torch.randn(b, n, 4, generator=g), torch.rand(b, n, generator=g) < 0.5, offset)
    start = offset + min(cut, n - 1) if cut < n else offset  # cut >= n: the write covers every position
    q = n - (start - offset) if cut >= n or cut % 2 else max(1, (n - (start - offset)) // 2)
    values, where = torch.randn(b, q, 4, generator=g), torch.rand(b, q, generator=g) < 0.5
    before = old.hidden.clone(), old.filled.clone()
    got = old.write_range(start, values, where)
    want = old.write(torch.arange(start, start + q), values, where=where)
    assert got.offset == want.offset and torch.equal(got.hidden, want.hidden) and torch.equal(got.filled, want.filled)
    assert torch.equal(old.hidden, before[0]) and torch.equal(old.filled, before[1])
