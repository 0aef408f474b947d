"""relaykit.spans: a positions tensor relaykit built itself carries its span in Python ints, for exactly as long as
it is the same object, unmodified; adapters turn it into ``CallPlan.span`` (no host read), and fall back to reading
every other tensor."""

from __future__ import annotations

import gc

import torch

from relaykit.kvcache import DecodeCall
from relaykit.plan import hf_span
from relaykit.spans import _KNOWN, known_span, remember


def test_a_recorded_span_holds_for_the_same_unmodified_tensor_only() -> None:
    t = remember(torch.arange(4, 8).unsqueeze(0), (4, 8))
    assert known_span(t) == (4, 8)
    assert known_span(t.clone()) is None and known_span(torch.arange(4, 8).unsqueeze(0)) is None
    assert known_span(t[:, :2]) is None  # a view is another object
    assert known_span([4, 5, 6, 7]) is None  # not a tensor
    t.add_(1)  # written in place: the version counter moved on
    assert known_span(t) is None


def test_a_write_through_a_view_also_drops_the_record() -> None:
    base = torch.arange(3, 6)
    t = remember(base.unsqueeze(0), (3, 6))
    base[0] = 9  # the view shares the base's version counter
    assert known_span(t) is None


def test_records_go_with_their_tensors() -> None:
    before = len(_KNOWN)
    t = remember(torch.arange(0, 5), (0, 5))
    assert len(_KNOWN) == before + 1
    del t
    gc.collect()
    assert len(_KNOWN) == before


def test_decode_call_positions_give_the_hf_plan_a_span_without_reading_them() -> None:
    call = DecodeCall("step", 2, 6, 3, cache_length=8, replaced=(2, 6))
    positions = call.position_ids()  # (3, 4)
    assert positions.tolist() == [[2, 3, 4, 5]] * 3
    ids = torch.zeros(3, 4, dtype=torch.long)
    assert hf_span(ids, {"position_ids": positions}, None) == (2, 6)
    assert hf_span(ids, {"position_ids": torch.arange(2, 6).expand(3, 4)}, None) is None  # a caller's: read
    assert hf_span(ids[:, :3], {"position_ids": positions}, None) is None  # not the fed length: read


def test_llada_dual_cache_columns_come_from_the_recorded_mask_or_are_read() -> None:
    from relaykit.adapters.llada import LLaDAAdapter, _replaced_columns

    call = DecodeCall("step", 4, 8, 2, cache_length=12, replaced=(4, 8))
    replace = LLaDAAdapter().decode_kwargs(None, call)["replace_position"]  # type: ignore[arg-type]
    ids = torch.zeros(2, 4, dtype=torch.long)
    positions, span = _replaced_columns(ids, replace)
    assert span == (4, 8) and positions.tolist() == [[4, 5, 6, 7]] * 2
    own = torch.zeros(2, 12, dtype=torch.bool)
    own[:, 4:8] = True  # the same mask, built by a third-party loop: read from the tensor
    read, none = _replaced_columns(ids, own)
    assert none is None and torch.equal(read, positions)
    replace[:, 4] = False  # modified after relaykit built it: the record no longer holds, and it is read
    replace[:, 9] = True
    assert _replaced_columns(ids, replace)[0].tolist() == [[5, 6, 7, 9]] * 2
