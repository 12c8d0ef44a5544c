"""Tests of carbongeo.training.interrupt: the deferred Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from carbongeo.training.interrupt import DeferredInterrupt, InterruptGuard


def test_first_ctrl_c_is_a_flag_the_second_stops_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    with InterruptGuard() as guard:
        assert not guard.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.requested  # no exception: the loop decides when to stop
        with pytest.raises(KeyboardInterrupt) as info:
            os.kill(os.getpid(), signal.SIGINT)
        assert not isinstance(info.value, DeferredInterrupt)
    assert signal.getsignal(signal.SIGINT) is before


def test_deferred_interrupt_is_a_keyboard_interrupt() -> None:
    # Callers that only know KeyboardInterrupt (the CLI, pytest) still see a Ctrl-C.
    assert issubclass(DeferredInterrupt, KeyboardInterrupt)


def test_outside_the_main_thread_the_handler_is_left_alone() -> None:
    before = signal.getsignal(signal.SIGINT)
    seen: list[object] = []

    def body() -> None:
        with InterruptGuard() as guard:
            seen.append(signal.getsignal(signal.SIGINT))
            seen.append(guard.requested)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [before, False]
    assert signal.getsignal(signal.SIGINT) is before
