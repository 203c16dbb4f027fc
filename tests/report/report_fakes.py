"""Implementations for the report tests (HTML in their text, a planted bug)."""

from __future__ import annotations

#: Text an implementation raises: the HTML report must show it, escaped, never run it.
PAYLOAD = "<script>document.documentElement.setAttribute('data-pwned','1')</script><img src=x onerror=\"document.documentElement.setAttribute('data-pwned','2')\">"

MODULE = f'''
from normspec.adapters.reference import ReferenceImplementation

PAYLOAD = {PAYLOAD!r}


class Scaled(ReferenceImplementation):
    """The reference with the training output 0.1% too large (fails bn.train.output)."""

    def __init__(self, dialect="torch"):
        super().__init__(dialect)
        self.name = "scaled <b>bn</b>"

    def build(self, config):
        layer = super().build(config)
        step = layer.train_step
        layer.train_step = lambda x: step(x) * 1.001
        return layer


class Raising(ReferenceImplementation):
    """The reference whose inference raises with HTML in the message (errors bn.infer.*)."""

    def build(self, config):
        layer = super().build(config)

        def infer(x):
            raise RuntimeError(PAYLOAD)

        layer.infer = infer
        return layer


class Slow(ReferenceImplementation):
    """The reference, a tenth of a second per training step (to be interrupted)."""

    def build(self, config):
        import time

        layer = super().build(config)
        step = layer.train_step

        def slow_step(x):
            time.sleep(0.1)
            return step(x)

        layer.train_step = slow_step
        return layer


scaled = Scaled("torch")
slow = Slow("torch")
raising = Raising("torch")
'''
