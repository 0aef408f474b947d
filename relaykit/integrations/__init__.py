"""relaykit.integrations: relay inside the tools the field runs (Hugging Face Trainer, lm-evaluation-harness).

Each module imports its tool only when used; the relaykit core never imports this package.

- ``relaykit.integrations.transformers``: :class:`RelayTrainerMixin` for ``transformers.Trainer`` and its
  subclasses.
- ``relaykit.integrations.lm_eval``: an lm-eval ``LM`` registered as ``relaykit`` (``pip install "relaykit[eval]"``).

Example::

    from relaykit.integrations.transformers import RelayTrainerMixin
    class RelayTrainer(RelayTrainerMixin, Trainer): ...
"""
