"""Run remove_loop_assign automatically on programs that ``paddle.jit.save`` writes.

``paddle.jit.save`` in PIR mode traces (to_static), clones the program and hands it
to ``save_inference_model``, which ``paddle/jit/api.py`` imported under its own name
(Paddle 3.0 to 3.3.1). While the hook is enabled that name points to a wrapper that
runs the pass on the clone first, so the saved ``.json`` holds the cleaned loop. A
legacy-format save cannot hold it (the copies only appear when Paddle translates
the file at load time); ``paddlenlp_ext.inference`` cleans those when it loads them.

    with paddlenlp_ext.enable():
        model.to_static(...)        # or paddle.jit.to_static + paddle.jit.save
        paddle.jit.save(...)

``enable()`` also works as a plain call (then ``disable()`` turns it off).
"""

from __future__ import annotations

import logging
import threading

import paddle.jit.api as jit_api

from .passes.remove_loop_assign import remove_loop_assign

logger = logging.getLogger("paddlenlp_ext")

_lock = threading.Lock()
_original_save = jit_api.save_inference_model
_depth = 0
_reports: list = []  # (path prefix, LoopAssignReport) of every cleaned save


def _save_cleaned(path_prefix, feed_vars, fetch_vars, executor, **kwargs):
    program = kwargs.get("program")
    if program is not None and isinstance(program, jit_api.paddle.pir.Program):
        report = remove_loop_assign(program, outputs=list(fetch_vars))
        _reports.append((path_prefix, report))
        logger.info("remove_loop_assign on %s: %s", path_prefix, report.summary())
    return _original_save(path_prefix, feed_vars, fetch_vars, executor, **kwargs)


class _Enabled:
    """What ``enable()`` returns: leaving its ``with`` block undoes that call, and
    ``reports`` lists ``(path prefix, report)`` for the saves made since."""

    def __init__(self):
        self._open = True
        self._first = len(_reports)

    @property
    def reports(self) -> list:
        return _reports[self._first:]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._open:
            self._open = False
            disable()
        return False


def enable() -> _Enabled:
    """Turn the hook on (calls nest: each ``disable()`` undoes one ``enable()``)."""
    global _depth
    with _lock:
        _depth += 1
        jit_api.save_inference_model = _save_cleaned
    return _Enabled()


def disable() -> None:
    global _depth
    with _lock:
        _depth = max(0, _depth - 1)
        if _depth == 0:
            jit_api.save_inference_model = _original_save


def is_enabled() -> bool:
    return _depth > 0
