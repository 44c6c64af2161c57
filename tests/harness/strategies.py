"""Hypothesis strategies derived from the wire schemas, so a new message is covered by the
round-trip tests the moment it is registered."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import strategies as st


def for_type(info: msgspec.inspect.Type) -> st.SearchStrategy[Any]:
    mi = msgspec.inspect
    if isinstance(info, mi.IntType):
        lo = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else -(2**63))
        hi = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else 2**64 - 1)
        return st.integers(lo, hi)
    if isinstance(info, mi.StrType):
        lo, hi = info.min_length or 0, info.max_length if info.max_length is not None else 200
        if info.pattern:
            return st.from_regex(info.pattern, fullmatch=True).filter(lambda s: lo <= len(s) <= hi)
        return st.text(min_size=lo, max_size=min(hi, 200))
    if isinstance(info, mi.BytesType):
        lo, hi = info.min_length or 0, info.max_length if info.max_length is not None else 200
        return st.binary(min_size=lo, max_size=min(hi, 200))
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.FloatType):
        return st.floats(allow_nan=False)
    if isinstance(info, mi.UnionType):
        return st.one_of([for_type(t) for t in info.types])
    if isinstance(info, mi.DictType):
        hi = info.max_length if info.max_length is not None else 8
        return st.dictionaries(for_type(info.key_type), for_type(info.value_type), max_size=min(hi, 8))
    if isinstance(info, (mi.ListType, mi.VarTupleType)):
        hi = info.max_length if info.max_length is not None else 4
        items = st.lists(for_type(info.item_type), min_size=info.min_length or 0, max_size=min(hi, 4))
        return items.map(tuple) if isinstance(info, mi.VarTupleType) else items
    if isinstance(info, mi.StructType):
        return message(info.cls)
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.EnumType):
        return st.sampled_from(list(info.cls))
    raise NotImplementedError(f"no strategy for schema type {info!r}: extend tests/harness/strategies.py")


def message(cls: type) -> st.SearchStrategy[Any]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return st.builds(cls, **{f.name: for_type(f.type) for f in info.fields})
