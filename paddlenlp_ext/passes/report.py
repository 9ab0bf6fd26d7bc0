"""The result object of the loop-copy passes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class KeptCopy:
    """An ``assign_out_`` inside a while body that a pass left in place."""

    loop: int  # which while op, counted in program order from 0
    op_id: int
    reason: str


@dataclass(frozen=True)
class LoopAssignReport:
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
