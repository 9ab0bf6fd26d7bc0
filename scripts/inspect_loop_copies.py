"""Show the loop copies of a legacy static model and what remove_loop_assign would do.

Loads ``PREFIX.pdmodel`` / ``PREFIX.pdiparams``, translates it to PIR as Paddle 3.x
does at load time, and prints, for each while loop, its copies and the analysis of
``remove_loop_assign`` and of PR #9002's rule. Nothing is written.

    python scripts/inspect_loop_copies.py path/to/model_prefix [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path


class InspectError(Exception):
    """A bad argument: reported on one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="model path without extension (PREFIX.pdmodel and PREFIX.pdiparams)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def inspect(prefix: str) -> dict:
    for suffix in (".pdmodel", ".pdiparams"):
        if not Path(prefix + suffix).is_file():
            raise InspectError(f"{prefix + suffix} not found (expected a legacy static model)")
    import paddle

    from paddlenlp_ext import remove_loop_assign_pr9002
    from paddlenlp_ext.export import load_legacy_as_pir
    from paddlenlp_ext.passes.copy_ops import loop_copies
    from paddlenlp_ext.passes.program_index import ProgramIndex
    from paddlenlp_ext.passes.remove_loop_assign import analyze_loop_assign

    paddle.enable_static()
    try:
        model = load_legacy_as_pir(prefix)
    except Exception as error:  # Paddle raises many types for unreadable models
        raise InspectError(f"cannot load {prefix}: {str(error).strip().splitlines()[0]}") from None
    copies = loop_copies(ProgramIndex.build(model.program))
    analysis = analyze_loop_assign(model.program, outputs=model.outputs)
    removable = sum(len(chain.copies) for chain in analysis.removable)
    pr9002 = remove_loop_assign_pr9002(load_legacy_as_pir(prefix).program)
    return {
        "model": prefix,
        "loops": len(copies),
        "copies": sum(len(c) for c in copies.values()),
        "removable": removable,
        "kept": {reason: n for reason, n in _count(k.reason for k in analysis.kept).items()},
        "pr9002_removable": pr9002.removed,
    }


def _count(items) -> dict:
    counts: dict = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = inspect(args.prefix)
    except InspectError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        kept = ", ".join(f"{reason} ({n})" for reason, n in result["kept"].items()) or "none"
        print(f"{result['model']}: {result['copies']} copies in {result['loops']} loops; "
              f"remove_loop_assign removes {result['removable']}, kept: {kept}; "
              f"PR #9002's rule removes {result['pr9002_removable']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
