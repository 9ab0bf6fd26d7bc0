"""dy2static's process-wide state, kept from leaking between traces (Paddle 3.3.1):
its cache of converted functions, and the parameters a failed trace recorded."""

from __future__ import annotations

import contextlib
import weakref


@contextlib.contextmanager
def isolated_dy2static_cache():
    """A block whose to_static conversions neither reuse nor leave converted functions.

    dy2static (Paddle 3.3.1, ``program_translator.FunctionCache`` and
    ``utils.ast_to_func``) converts each function once per process and gives the
    converted function a copy of its module's globals taken then. A module global
    patched here would be missed by a function converted before the block (a failed
    ``to_static`` first, then a retry with the patches), and kept after the block by one
    converted inside it. So the block gets an empty cache and the old one is put back.
    """
    from paddle.jit.dy2static import program_translator

    cache = program_translator._FUNCTION_CACHE
    saved = cache._converted_static_func_caches
    cache._converted_static_func_caches = weakref.WeakKeyDictionary()
    try:
        yield
    finally:
        cache._converted_static_func_caches = saved


def _drop_stale_trace_records():
    from paddle.base.dygraph.base import in_to_static_mode
    from paddle.jit.dy2static.parameter_recorder import _global_parameter_recorder
    from paddle.jit.dy2static.program_translator import ProgramTranslator

    if in_to_static_mode():  # a trace is running: its records are live
        return
    legacy = ProgramTranslator.get_instance()._params_recorder  # legacy programs
    legacy.params_dict.clear()
    _global_parameter_recorder.params_dict.clear()  # PIR programs
    _global_parameter_recorder.tensor2value.clear()


@contextlib.contextmanager
def fresh_trace_records():
    """Trace and save with no parameters recorded by an earlier, failed trace.

    While dy2static traces a function, Paddle 3.3.1 records every parameter and buffer
    the function reads (``ProgramTranslator._params_recorder`` for legacy programs,
    ``parameter_recorder._global_parameter_recorder`` for PIR ones), keyed by
    ``id(main_program)``, and pops the record only when the trace returns
    (``ConcreteProgram.from_func_spec``, ``graph_tracing_guard``): a trace that raises
    leaves its record behind, holding its layer's tensors. When a later trace's new
    Program lands at the dead program's address (CPython reuses ids), it pops those
    tensors with its own: ``jit.save`` then looks them up in the saved layer's state
    dict and raises ``KeyError: 'eager_tmp_10'`` (another model's rotary cache) in the
    legacy format, and in PIR format the trace reuses values of the dead program and
    the process can crash. Records only matter during a trace, so they are all dropped
    before ours (whatever failed before) and after it (in case ours fails).
    """
    _drop_stale_trace_records()
    try:
        yield
    finally:
        _drop_stale_trace_records()

