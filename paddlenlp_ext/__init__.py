"""paddlenlp_ext: remove redundant loop copies from static-graph LLM decoding in PaddlePaddle."""

from .passes import KeptCopy, LoopAssignReport, analyze_loop_assign, remove_loop_assign, remove_loop_assign_pr9002

__version__ = "0.1.0"

__all__ = [
    "KeptCopy",
    "LoopAssignReport",
    "analyze_loop_assign",
    "remove_loop_assign",
    "remove_loop_assign_pr9002",
]
