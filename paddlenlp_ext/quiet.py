"""Keeping a command-line tool's output to its own lines while Paddle runs."""

from __future__ import annotations

import contextlib
import os
import warnings


@contextlib.contextmanager
def quiet_paddle():
    """Run a block with Paddle's C++ info lines and Python warnings off.

    ``GLOG_minloglevel`` is read when Paddle loads, so enter this before importing it.
    The warnings (no ccache, on import; dy2static's and distutils' notes while tracing)
    would otherwise mix with a tool's output and its one-line errors.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def quiet_paddlenlp() -> None:
    """Turn PaddleNLP's INFO lines off (it logs every model and tokenizer load and save
    to stderr, which would bury a tool's output and its one-line errors)."""
    from paddlenlp.utils.log import logger

    logger.set_level("WARNING")
