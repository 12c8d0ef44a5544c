"""Ctrl-C during training: deferred to the next step boundary, so a saved state is consistent.

The first SIGINT only sets :attr:`InterruptGuard.requested`; the training loop checks it between
steps and raises :class:`DeferredInterrupt`, after which the state it saves is never taken in the
middle of an update. A second SIGINT raises :class:`KeyboardInterrupt` at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class DeferredInterrupt(KeyboardInterrupt):
    """Ctrl-C taken at a step boundary: the state is consistent and can be saved."""


class InterruptGuard:
    """Turns the first Ctrl-C into a flag checked at step boundaries; the second stops at once.

    Only installed in the main thread (signal handlers cannot be set elsewhere). Forked DataLoader
    workers inherit the handler, so they keep running until the main process stops them.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)
