"""paddlenlp_ext: remove redundant loop copies from static-graph LLM decoding in PaddlePaddle."""

from .passes.pr9002_rule import remove_loop_assign_pr9002
from .passes.remove_loop_assign import analyze_loop_assign, remove_loop_assign
from .passes.report import KeptCopy, LoopAssignReport

__version__ = "0.1.0"

__all__ = [
    "KeptCopy",
    "LoopAssignReport",
    "analyze_loop_assign",
    "remove_loop_assign",
    "remove_loop_assign_pr9002",
]
