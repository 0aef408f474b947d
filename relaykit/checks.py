"""Shared validation helpers: the checks many modules make, written once with one wording.

Legend: b batch, n positions.

Each helper either returns the checked value or raises an error that names the argument, what was expected and
what came. Nothing is coerced silently: a bool is not an int here, a float is not a count.

Example::

    >>> positive_int(3, name="block_size")
    3
    >>> is_int(True)
    False
"""

from __future__ import annotations

from typing import Any, TypeGuard


def is_int(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is a Python int and not a bool (``True`` is an int to Python, never a count here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any, *, name: str) -> int:
    """``value`` when it is an int >= 1; ValueError naming ``name`` otherwise."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def non_negative_int(value: Any, *, name: str) -> int:
    """``value`` when it is an int >= 0; ValueError naming ``name`` otherwise."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value
