"""Keeping Paddle's and PaddleNLP's chatter out of a user's output.

The command-line tools turn it off for their whole run (``quiet_paddle``,
``quiet_paddlenlp``). Library calls that make Paddle or PaddleNLP talk (loading and
exporting a model, translating a program, creating a predictor and its first run) run under
``library_quiet``: Python warnings, PaddleNLP's INFO lines and the C++ output (glog
lines, and oneDNN's debug prints to stdout) are dropped for that call. Setting
``PADDLENLP_EXT_VERBOSE=1`` keeps all of it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

VERBOSE_VARIABLE = "PADDLENLP_EXT_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0")


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


@contextlib.contextmanager
def native_output_to(target_fd: int | None, fds=(1, 2)):
    """Send what C/C++ code writes to the file descriptors ``fds`` to ``target_fd``
    (None: nowhere) for a block; Python's own streams are flushed on both sides."""
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    sink = os.open(os.devnull, os.O_WRONLY) if target_fd is None else target_fd
    saved = {fd: os.dup(fd) for fd in fds}
    try:
        for fd in fds:
            os.dup2(sink, fd)
        yield
    finally:
        libc.fflush(None)
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        if target_fd is None:
            os.close(sink)


@contextlib.contextmanager
def library_quiet(paddlenlp: bool = False):
    """A library call that makes Paddle (and, with ``paddlenlp``, PaddleNLP) talk,
    quiet unless ``verbose()``. Errors still arrive as exceptions."""
    if verbose():
        yield
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        if paddlenlp:
            from paddlenlp.utils.log import logger

            level = logger.logger.level
            logger.set_level("WARNING")
            stack.callback(logger.logger.setLevel, level)
        stack.enter_context(native_output_to(None))
        yield


def quiet_imports() -> None:
    """On ``import paddlenlp_ext``, unless ``verbose()``: Paddle's glog INFO lines off if
    Paddle is not loaded yet (it reads ``GLOG_minloglevel`` when it loads), the warnings
    importing Paddle raises about the build machine filtered, and this package's own
    INFO records (the pass reports) left to those who ask for them by lowering the
    ``paddlenlp_ext`` logger's level."""
    if verbose():
        return
    import logging

    if "paddle" not in sys.modules:
        os.environ.setdefault("GLOG_minloglevel", "2")
    warnings.filterwarnings("ignore", message="No ccache found")
    warnings.filterwarnings("ignore", message="Setuptools is replacing distutils")
    logger = logging.getLogger("paddlenlp_ext")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
    # PaddleNLP imports datasets, which logs "PyTorch version ... available." at INFO as it
    # loads wherever torch is installed (the benchmark's peers extra brings it).
    datasets = logging.getLogger("datasets")
    if datasets.level == logging.NOTSET:
        datasets.setLevel(logging.WARNING)
