"""Run remove_loop_assign automatically where programs are saved and where they are loaded.

While the hook is enabled, two Paddle functions are replaced (and put back when it
is disabled):

- ``paddle.jit.api.save_inference_model`` (what ``paddle.jit.save`` calls). Saving:
  ``paddle.jit.save`` in PIR mode traces (to_static), clones the program and hands
  it to ``save_inference_model``, which ``paddle/jit/api.py`` imported under its own
  name (Paddle 3.0 to 3.3.1). While the hook is enabled that name points to a
  wrapper that runs ``passes.pipeline.saving_passes`` on the clone first (the pass, then
  ``guard_onednn_inplace``, so that Paddle Inference's default CPU config runs it
  right), so the saved ``.json`` holds the cleaned loop. A legacy-format save cannot hold it (the copies only appear when
  Paddle translates the file at load time): those are cleaned where they are loaded.
- ``paddle.inference.create_predictor``. Loading: a ``Config`` naming a legacy
  ``.pdmodel`` + ``.pdiparams`` pair whose program has a while loop (a generation
  model: PaddleNLP 2.8's ``to_static`` export, say) gets a predictor for the
  translated, cleaned program, configured as ``StaticGenerationModel`` runs it (new
  IR; on CPU Paddle's oneDNN placement with ``inplace_pass`` deleted, or oneDNN off when the
  caller's config disabled it); the caller's ``Config`` is left as it was and every other
  setting in it is kept (``hook_config.cleaned_legacy_config``). The predictor has the
  names the caller's own predictor has (``tmp_7``, not ``fetch_name_0``). Anything else
  is created as before. Where the cleaned program cannot be built or run, the
  untouched program runs on the same configuration, then the caller's own config,
  unless it is one ``docs/onednn.md`` documents as wrong (one warning on the
  ``paddlenlp_ext`` logger at each step says why: ``FallbackPredictor``). Code that
  imported ``create_predictor`` by name before the hook was enabled keeps Paddle's own.

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

from .passes.pipeline import run_passes, saving_passes

logger = logging.getLogger("paddlenlp_ext")

_lock = threading.Lock()
_original_save = jit_api.save_inference_model
_original_create_predictor = paddle_inference.create_predictor
_depth = 0
_reports: list = []  # (path prefix, LoopAssignReport) of every cleaned save or load


def _save_cleaned(path_prefix, feed_vars, fetch_vars, executor, **kwargs):
    program = kwargs.get("program")
    if program is not None and isinstance(program, jit_api.paddle.pir.Program):
        fetch_vars = list(fetch_vars)  # a pass may replace a fetched value
        pipeline = run_passes(program, fetch_vars, saving_passes())
        report = pipeline.get("remove_loop_assign")
        _reports.append((path_prefix, report))
        logger.info("remove_loop_assign on %s: %s", path_prefix, report.summary())
        guarded = pipeline.get("onednn_inplace_guard")
        if guarded.modified:
            logger.info("guard_onednn_inplace on %s: %s", path_prefix, guarded.summary())
    return _original_save(path_prefix, feed_vars, fetch_vars, executor, **kwargs)


def _create_cleaned_predictor(config):
    """The hook's ``create_predictor``: for a legacy decoding loop, a FallbackPredictor
    (the first of its stages that builds); anything else as Paddle creates it."""
    from .hook_config import cleaned_legacy_config
    from .program_files import ModelDirectoryError

    try:
        cleaned = cleaned_legacy_config(config)
    except ModelDirectoryError:
        raise  # damaged files: Paddle's own predictor would run on them
    except Exception as error:
        cleaned = error
    if cleaned is None:
        return _original_create_predictor(config)
    predictor = FallbackPredictor(config, _legacy_names(config.prog_file()))
    predictor._start(cleaned)
    return predictor


def _legacy_names(prog_file: str) -> tuple[list, list]:
    """``(input names, output names)`` of a legacy ``.pdmodel``, as Paddle Inference names
    them: its feed and fetch targets, by column (read from the file, no weights loaded)."""
    from paddle.base import core

    with open(prog_file, "rb") as file:
        desc = core.ProgramDesc(file.read())
    block = desc.block(0)  # a view into desc, which must outlive it
    columns = {"feed": {}, "fetch": {}}
    for k in range(block.op_size()):
        op = block.op(k)
        if op.type() == "feed":
            columns["feed"][op.attr("col")] = op.output("Out")[0]
        elif op.type() == "fetch":
            columns["fetch"][op.attr("col")] = op.input("X")[0]
    return ([columns["feed"][col] for col in sorted(columns["feed"])],
            [columns["fetch"][col] for col in sorted(columns["fetch"])])


class FallbackPredictor:
    """The hook's predictor for a legacy decoding loop. It runs, in order, the first of
    these that builds, and moves to the next when a run fails (that run is made again,
    with the same inputs; one warning says why at each step):

    1. the cleaned program (``cleaned_legacy_config``) on our configuration, with the
       caller's oneDNN choice;
    2. the untouched program on that configuration (``cleaned_legacy_config(...,
       optimize=False)``: only the passes that keep it right);
    3. the caller's own config, as given, unless ``docs/onednn.md`` documents it as
       wrong (``inference.known_wrong``): then NoSafeRuntimeError.

    It has the names the caller's own predictor has, whatever runs: inputs and outputs
    are named as the legacy program names them (``tmp_7``), and handles by those names
    keep working after a fallback; ``clone()`` returns a FallbackPredictor too.
    Everything else is the Paddle predictor's. Input handles remember what they were
    given, to feed it again; output handles are resolved by position at each use.
    """

    def __init__(self, config, names: tuple[list, list]):
        self._config = config  # the caller's, as given
        self._input_names, self._output_names = list(names[0]), list(names[1])
        self._predictor = None
        self._stage = 0  # of the three above
        self._failures: list[str] = []
        self._fed: dict = {}  # input name -> {handle method: args}: the last reshape and the last data given

    def _start(self, cleaned) -> None:
        """Build stage 1 from ``cleaned`` (a CleanedConfig, or the error that stopped it),
        falling back while a stage cannot be built."""
        try:
            if isinstance(cleaned, Exception):
                raise cleaned
            self._predictor = _original_create_predictor(cleaned.config)
        except Exception as error:
            self._next_stage("built", error)
            return
        _reports.append((self._config.prog_file(), cleaned.report))
        logger.info("remove_loop_assign on %s: %s", self._config.prog_file(), cleaned.report.summary())
        _settle_cpu_weights(cleaned.config)

    def _next_stage(self, failed: str, error: Exception) -> None:
        from .errors import error_line
        from .hook_config import cleaned_legacy_config
        from .inference import NoSafeRuntimeError
        from .paddle_config import known_wrong
        from .program_files import ModelDirectoryError

        path = self._config.prog_file()
        while True:
            reason = f"{_STAGE_NAMES[self._stage]} could not be {failed}: {error_line(error)}"
            self._failures.append(reason)
            self._stage += 1
            wrong = known_wrong(self._config) if self._stage == 2 else None
            if self._stage == 3 or wrong:
                failures = self._failures + ([f"the caller's config is not used: {wrong}"] if wrong else [])
                raise NoSafeRuntimeError(f"{path}: no configuration known to run it right is left "
                                         f"({'; '.join(failures)})") from None
            logger.warning("%s: running %s (%s)", path, _STAGE_NAMES[self._stage], reason)
            self._predictor = None  # one predictor's weights in memory at a time
            try:
                if self._stage == 1:
                    cleaned = cleaned_legacy_config(self._config, optimize=False)
                    self._predictor = _original_create_predictor(cleaned.config)
                    _settle_cpu_weights(cleaned.config)
                else:  # a copy: the caller may have made a predictor of theirs already
                    self._predictor = _original_create_predictor(paddle_inference.Config(self._config))
            except ModelDirectoryError:
                raise
            except Exception as caught:
                failed, error = "built", caught
                continue
            self._feed_again()
            return

    def _feed_again(self) -> None:
        for name, calls in self._fed.items():
            handle = self._predictor.get_input_handle(self._running_input_name(name))
            for method, args in calls.items():  # in the order the caller first made them
                getattr(handle, method)(*args)

    @staticmethod
    def _position(name: str, names: list) -> int:
        if name not in names:  # as Paddle's own predictor, an unknown name is an error
            raise ValueError(f"the predictor has no tensor named {name!r} (it has {', '.join(names)})")
        return names.index(name)

    def _running_input_name(self, name: str) -> str:
        """The running predictor's name for the caller's input ``name`` (same position)."""
        return self._predictor.get_input_names()[self._position(name, self._input_names)]

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def get_input_names(self) -> list:
        return list(self._input_names)

    def get_output_names(self) -> list:
        return list(self._output_names)

    def get_input_handle(self, name: str):
        self._position(name, self._input_names)
        return _InputHandle(self, name)

    def get_output_handle(self, name: str):
        return _OutputHandle(self, self._position(name, self._output_names))

    def clone(self, *args):
        twin = FallbackPredictor(self._config, (self._input_names, self._output_names))
        twin._predictor = self._predictor.clone(*args)
        twin._stage, twin._failures = self._stage, list(self._failures)
        return twin

    def run(self, *args):
        while True:
            try:
                return self._predictor.run(*args)
            except Exception as error:
                if self._stage == 2:
                    raise
                self._next_stage("run", error)


_STAGE_NAMES = ("the cleaned program on paddlenlp_ext's configuration",
                "the untouched program on paddlenlp_ext's configuration",
                "Paddle Inference as configured without paddlenlp_ext")


def _settle_cpu_weights(config) -> None:
    from .paddle_config import settle_cpu_weights

    settle_cpu_weights(config)


class _InputHandle:
    _REMEMBERED = ("reshape", "copy_from_cpu", "share_external_data")

    def __init__(self, owner: FallbackPredictor, name: str):
        self._owner, self._name = owner, name  # the caller's name

    def __getattr__(self, attribute):
        owner = self._owner
        value = getattr(owner._predictor.get_input_handle(owner._running_input_name(self._name)), attribute)
        if attribute not in self._REMEMBERED or owner._stage == 2:
            return value

        def remembered(*args):
            if attribute == "copy_from_cpu":  # the caller may reuse its array
                args = tuple(np.array(arg, copy=True) for arg in args)
            calls = owner._fed.setdefault(self._name, {})
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
