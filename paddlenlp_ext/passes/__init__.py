"""PIR passes of paddlenlp_ext, one per module."""

from .pr9002_rule import remove_loop_assign_pr9002
from .remove_loop_assign import analyze_loop_assign, remove_loop_assign
from .report import KeptCopy, LoopAssignReport

__all__ = [
    "KeptCopy",
    "LoopAssignReport",
    "analyze_loop_assign",
    "remove_loop_assign",
    "remove_loop_assign_pr9002",
]
