"""relaykit.testing: small models for tests and for the examples' ``--tiny`` mode, shipped in the wheel.

``relaykit.testing.twins`` holds random re-implementations of backbones whose modeling code is not on PyPI
(LLaDA, MDLM, BD3-LM, Fast-dLLM v2, Dream). The twins need ``transformers`` (the ``test`` or ``examples`` extra);
the relaykit core never imports this package.

Example::

    from relaykit.testing.twins.llada import tiny_llada
    relay = relaykit.attach(tiny_llada())     # detected as "llada"
"""
