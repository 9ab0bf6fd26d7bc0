"""What the passes return: one report protocol (``PassReport``), and the loop-copy passes' report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


class PassReport:
    """What every pass of ``passes/`` returns (after torch.fx's ``PassResult``): a small
    frozen record of what it did, whose ``modified`` is true exactly when the IR changed,
    and ``summary()``, one line for logs and CLIs. ``passes.pipeline`` relies on both.

    Every pass is called the same way: ``name(program, outputs=None, *, options)``.
    ``program`` is rewritten in place; ``outputs`` is the list of values the caller
    fetches after a run (None: none), which a pass reads where its safety depends on
    what is fetched, and updates in place where it replaces one; a pass's own options
    are keyword-only. ``tests/test_pipeline.py`` holds every pass to this."""

    @property
    def modified(self) -> bool:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class KeptCopy:
    """An ``assign_out_`` inside a while body that a pass left in place."""

    loop: int  # which while op, counted in program order from 0
    op_id: int
    reason: str


@dataclass(frozen=True)
class LoopAssignReport(PassReport):
    removed: int  # assign_out_ ops erased
    loops: int  # while ops in the program
    kept: tuple[KeptCopy, ...] = ()

    @property
    def modified(self) -> bool:
        return self.removed > 0

    @property
    def kept_reasons(self) -> dict[str, int]:
        return dict(sorted(Counter(k.reason for k in self.kept).items()))

    def record(self) -> dict:
        """What a model directory's ``paddlenlp_ext.json`` keeps of the report."""
        return {"removed": self.removed, "kept": self.kept_reasons}

    def summary(self) -> str:
        text = f"removed {self.removed} copies from {self.loops} loops; kept {len(self.kept)}"
        if self.kept:
            text += ": " + ", ".join(f"{reason} ({n})" for reason, n in self.kept_reasons.items())
        return text
