"""Show the loop copies of a static model and what remove_loop_assign would do.

Loads a static model directory (``model.pdmodel`` or ``model.json``, with
``model.pdiparams``), translating a legacy program to PIR as Paddle 3.x does at load
time, and prints its loop copies and the analysis of ``remove_loop_assign`` and of
PR #9002's rule. Nothing is written.

    python -m paddlenlp_ext.inspect path/to/model_dir [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from .quiet import quiet_paddle


class InspectError(Exception):
    """A bad argument: reported on one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a static model directory (model.pdmodel or model.json, model.pdiparams)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def inspect(model_dir: str) -> dict:
    import paddle

    from . import remove_loop_assign_pr9002
    from .program_files import ModelDirectoryError, count_loop_copies, load_program, model_format
    from .passes.loop_assign_analysis import analyze_loop_assign

    paddle.enable_static()
    try:
        fmt = model_format(model_dir)
        loaded = load_program(model_dir)
    except ModelDirectoryError as error:
        raise InspectError(str(error)) from None
    analysis = analyze_loop_assign(loaded.program, outputs=loaded.outputs)
    pr9002 = remove_loop_assign_pr9002(load_program(model_dir).program)
    return {
        "model": model_dir,
        "format": fmt,
        "loops": analysis.loops,
        "copies": count_loop_copies(loaded.program),
        "removable": sum(len(chain.copies) for chain in analysis.removable),
        "kept": _count(k.reason for k in analysis.kept),
        "pr9002_removable": pr9002.removed,
    }


def _count(items) -> dict:
    return dict(sorted(Counter(items).items()))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with quiet_paddle():
            result = inspect(args.model_dir)
    except InspectError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        kept = ", ".join(f"{reason} ({n})" for reason, n in result["kept"].items()) or "none"
        print(f"{result['model']} ({result['format']}): {result['copies']} copies in {result['loops']} loops; "
              f"remove_loop_assign removes {result['removable']}, kept: {kept}; "
              f"PR #9002's rule removes {result['pr9002_removable']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
