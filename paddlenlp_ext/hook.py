"""Run remove_loop_assign automatically where programs are saved and where they are loaded.

While the hook is enabled, two Paddle functions are replaced (and put back when it
is disabled):

- ``paddle.jit.api.save_inference_model`` (what ``paddle.jit.save`` calls). Saving:
  ``paddle.jit.save`` in PIR mode traces (to_static), clones the program and hands
  it to ``save_inference_model``, which ``paddle/jit/api.py`` imported under its own
  name (Paddle 3.0 to 3.3.1). While the hook is enabled that name points to a
  wrapper that runs the pass on the clone first, then ``guard_onednn_inplace`` (so
  that Paddle Inference's default CPU config runs it right), so the saved ``.json``
  holds the cleaned loop. A legacy-format save cannot hold it (the copies only appear when
  Paddle translates the file at load time): those are cleaned where they are loaded.
- ``paddle.inference.create_predictor``. Loading: a ``Config`` naming a legacy
  ``.pdmodel`` + ``.pdiparams`` pair whose program has a while loop (a generation
  model: PaddleNLP 2.8's ``to_static`` export, say) gets a predictor for the
  translated, cleaned program, configured as ``StaticGenerationModel`` runs it (new
  IR; on CPU Paddle's oneDNN placement with ``inplace_pass`` deleted, or oneDNN off when the
  caller's config disabled it); the caller's ``Config`` is left as it was and every other
  setting in it is kept (``inference.cleaned_legacy_config``). Anything else is
  created as before, and so is a loop whose translated program cannot be built (one
  warning on the ``paddlenlp_ext`` logger says why); if a run of the cleaned program
  fails, that run and every later one go to the caller's own config
  (``FallbackPredictor``). Code that imported ``create_predictor`` by name before the hook
  was enabled keeps Paddle's own.

    with paddlenlp_ext.enable():
        model.to_static(...)        # or paddle.jit.to_static + paddle.jit.save
        predictor = paddle.inference.create_predictor(config)   # a legacy .pdmodel

``enable()`` also works as a plain call (then ``disable()`` turns it off).
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import paddle.inference as paddle_inference
import paddle.jit.api as jit_api

from .passes.onednn_inplace_guard import guard_onednn_inplace
from .passes.remove_loop_assign import remove_loop_assign

logger = logging.getLogger("paddlenlp_ext")

_lock = threading.Lock()
_original_save = jit_api.save_inference_model
_original_create_predictor = paddle_inference.create_predictor
_depth = 0
_reports: list = []  # (path prefix, LoopAssignReport) of every cleaned save or load


def _save_cleaned(path_prefix, feed_vars, fetch_vars, executor, **kwargs):
    program = kwargs.get("program")
    if program is not None and isinstance(program, jit_api.paddle.pir.Program):
        report = remove_loop_assign(program, outputs=list(fetch_vars))
        _reports.append((path_prefix, report))
        logger.info("remove_loop_assign on %s: %s", path_prefix, report.summary())
        guarded = guard_onednn_inplace(program, outputs=list(fetch_vars))
        if guarded.modified:
            logger.info("guard_onednn_inplace on %s: %s", path_prefix, guarded.summary())
    return _original_save(path_prefix, feed_vars, fetch_vars, executor, **kwargs)


def _create_cleaned_predictor(config):
    from .host_memory import return_free_memory
    from .inference import ModelDirectoryError, cleaned_legacy_config, warn_fallback

    try:
        cleaned = cleaned_legacy_config(config)
        if cleaned is None:
            return _original_create_predictor(config)
        cleaned_config, report = cleaned
        predictor = _original_create_predictor(cleaned_config)
        return_free_memory()  # what loading the predictor freed
    except ModelDirectoryError:
        raise  # damaged files: Paddle's own predictor would run on them
    except Exception as error:  # never worse than Paddle: the caller's config, as it was
        warn_fallback(config.prog_file(), "built", error)
        return _original_create_predictor(config)
    _reports.append((config.prog_file(), report))
    logger.info("remove_loop_assign on %s: %s", config.prog_file(), report.summary())
    return FallbackPredictor(predictor, config)


class FallbackPredictor:
    """The hook's predictor: the cleaned program's, until one of its runs fails. That
    run is then made again, with the same inputs, on a predictor from the caller's own
    config (one warning says why), which serves every later call: never worse than
    Paddle as the caller configured it.

    Everything else is the Paddle predictor's. Input handles remember what they were
    given, to feed it again; output handles are taken by position at each use, since
    the two programs may name their outputs differently.
    """

    def __init__(self, cleaned, config):
        self._predictor = cleaned
        self._config = config  # the caller's, as given
        self._fell_back = False
        self._fed: dict = {}  # input name -> {handle method: args}: the last reshape and the last data given

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def get_input_handle(self, name: str):
        return _InputHandle(self, name)

    def get_output_handle(self, name: str):
        return _OutputHandle(self, self._predictor.get_output_names().index(name))

    def run(self, *args):
        try:
            return self._predictor.run(*args)
        except Exception as error:
            if self._fell_back:
                raise
            self._fall_back(error)
        return self._predictor.run(*args)

    def _fall_back(self, error: Exception) -> None:
        from .inference import warn_fallback

        warn_fallback(self._config.prog_file(), "run", error)
        self._predictor = None  # one predictor's weights in memory at a time
        self._predictor = _original_create_predictor(self._config)
        self._fell_back = True
        for name, calls in self._fed.items():
            handle = self._predictor.get_input_handle(name)
            for method, args in calls.items():  # in the order the caller first made them
                getattr(handle, method)(*args)


class _InputHandle:
    _REMEMBERED = ("reshape", "copy_from_cpu", "share_external_data")

    def __init__(self, owner: FallbackPredictor, name: str):
        self._owner, self._name = owner, name

    def __getattr__(self, attribute):
        value = getattr(self._owner._predictor.get_input_handle(self._name), attribute)
        if attribute not in self._REMEMBERED or self._owner._fell_back:
            return value

        def remembered(*args):
            if attribute == "copy_from_cpu":  # the caller may reuse its array
                args = tuple(np.array(arg, copy=True) for arg in args)
            calls = self._owner._fed.setdefault(self._name, {})
            if attribute != "reshape":  # new data replaces what came before
                calls.pop("copy_from_cpu", None)
                calls.pop("share_external_data", None)
            calls[attribute] = args
            return value(*args)

        return remembered


class _OutputHandle:
    def __init__(self, owner: FallbackPredictor, position: int):
        self._owner, self._position = owner, position

    def __getattr__(self, attribute):
        predictor = self._owner._predictor
        return getattr(predictor.get_output_handle(predictor.get_output_names()[self._position]), attribute)


class _Enabled:
    """What ``enable()`` returns: leaving its ``with`` block undoes that call, and
    ``reports`` lists ``(path, report)`` for the saves and loads cleaned since."""

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
        paddle_inference.create_predictor = _create_cleaned_predictor
    return _Enabled()


def disable() -> None:
    global _depth
    with _lock:
        _depth = max(0, _depth - 1)
        if _depth == 0:
            jit_api.save_inference_model = _original_save
            paddle_inference.create_predictor = _original_create_predictor


def is_enabled() -> bool:
    return _depth > 0
