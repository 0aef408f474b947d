"""The paper's four training methods as frozen descriptions of the persistent driver's options.

==========  ====  ========  =====  =============  ==========
method      k     init      relay  stop_gradient  persistent
==========  ====  ========  =====  =============  ==========
mlm         1     random    no     -              no (a fresh sample every step)
rollout     2     full      no     -              yes
relay_sg    2     full      yes    yes            yes
relay       2     full      yes    no             yes
==========  ====  ========  =====  =============  ==========

Example::

    >>> METHODS["relay_sg"].stop_gradient
    True
    >>> METHODS["relay"].override(k=3).k
    3
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from relaykit.checks import positive_int

InitKind = Literal["full", "random"]
INITS = ("full", "random")


@dataclass(frozen=True)
class Method:
    """How the persistent driver trains: the options of :func:`relaykit.bptt_rollout` a method fixes.

    Attributes:
        k: denoising steps per truncated-BPTT window (the paper's K).
        init: how a new sample is masked: ``"full"`` (every maskable position) or ``"random"`` (MLM's ratio).
        relay_enabled: False runs the bare backbone (the Rollout and MLM baselines).
        stop_gradient: detach h between steps (Relay (sg)).
        persistent: keep rows across optimiser steps (False: every row takes a new sample every step).
    """

    k: int
    init: InitKind
    relay_enabled: bool
    stop_gradient: bool
    persistent: bool

    def __post_init__(self) -> None:
        positive_int(self.k, name="k (denoising steps per window)")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")

    def override(self, **options: Any) -> Method:
        """This method with the options that are not None replaced (the driver's explicit arguments)."""
        unknown = sorted(set(options) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown method option(s) {unknown}; options are {[f.name for f in fields(self)]}")
        given = {key: value for key, value in options.items() if value is not None}
        return replace(self, **given)


#: the paper's four training methods (explicit driver arguments override them)
METHODS: dict[str, Method] = {
    "mlm": Method(k=1, init="random", relay_enabled=False, stop_gradient=False, persistent=False),
    "rollout": Method(k=2, init="full", relay_enabled=False, stop_gradient=False, persistent=True),
    "relay_sg": Method(k=2, init="full", relay_enabled=True, stop_gradient=True, persistent=True),
    "relay": Method(k=2, init="full", relay_enabled=True, stop_gradient=False, persistent=True),
}
