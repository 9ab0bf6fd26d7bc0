"""Ctrl-C in a command line, as a test sends it: once its work is under way."""

import signal
import time


def interrupt_when_ready(process, ready, seconds: float = 60.0) -> str:
    """Send SIGINT to ``process`` once ``ready()`` holds (polling for ``seconds``), and
    return its stderr once it has exited with 130 and the one line ``interrupted``."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the command never got under way"
        time.sleep(0.025)
    process.send_signal(signal.SIGINT)
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 130, stderr
    assert stderr.splitlines()[-1] == "interrupted" and "Traceback" not in stderr
    return stderr
