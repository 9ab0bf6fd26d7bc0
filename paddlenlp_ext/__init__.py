"""paddlenlp_ext: remove redundant loop copies from static-graph LLM decoding in PaddlePaddle.

The names below load on first use, so a command-line entry point can configure
Paddle's logging before Paddle is imported. Paddle's and PaddleNLP's chatter stays
quiet unless ``PADDLENLP_EXT_VERBOSE=1`` (``quiet``).
"""

import importlib

from .quiet import quiet_imports

__version__ = "0.1.0"

quiet_imports()

_EXPORTS = {
    "remove_loop_assign": ".passes.remove_loop_assign",
    "analyze_loop_assign": ".passes.loop_assign_analysis",
    "remove_loop_assign_pr9002": ".passes.pr9002_rule",
    "LoopAssignReport": ".passes.report",
    "KeptCopy": ".passes.report",
    "guard_onednn_inplace": ".passes.onednn_inplace_guard",
    "OneDNNGuardReport": ".passes.onednn_inplace_guard",
    "enable": ".hook",
    "disable": ".hook",
    "load_model": ".models",
    "ModelError": ".models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
