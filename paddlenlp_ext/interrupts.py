"""Ctrl-C that a library cannot swallow.

Paddle 3.3.1's dy2static catches everything with a bare ``except:`` in code it runs for
every op while it traces a program (``paddle/jit/dy2static/origin_info.py`` when it
attaches each op's call stack, ``utils.py``), KeyboardInterrupt included: a Ctrl-C that
lands there is lost, and the export goes on to its end and into place. So the command
lines record every SIGINT (``recording_interrupts``), and the points that make work
permanent (an export's rename into place, an output file's) call
``raise_if_interrupted`` first. A SIGINT that lands inside one of Paddle's C++ calls can
also come out as another exception (seen, Paddle 3.3.1: ``save_inference_model`` raising
"RuntimeError: Failed to get callstack object" when the KeyboardInterrupt hit its
call-stack lookup): within ``recording_interrupts``, an error raised after a SIGINT is
the interrupt.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_interrupted = threading.Event()


def _record_and_raise(signum, frame):
    _interrupted.set()
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt


@contextlib.contextmanager
def recording_interrupts():
    """Within the block, a SIGINT raises KeyboardInterrupt as usual and is also
    remembered; an exception leaving the block after one is a KeyboardInterrupt. Outside
    the main thread (where signals cannot be handled) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _interrupted.clear()
    previous = signal.signal(signal.SIGINT, _record_and_raise)
    try:
        yield
    except Exception as error:
        if _interrupted.is_set():  # what a library made of the KeyboardInterrupt
            raise KeyboardInterrupt from error
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupted.clear()


def raise_if_interrupted() -> None:
    """KeyboardInterrupt if a SIGINT came while ``recording_interrupts`` was on,
    whether or not its KeyboardInterrupt reached us."""
    if _interrupted.is_set():
        raise KeyboardInterrupt
