"""A drop-in for PaddleNLP's ``llm/export_model.py``: export a causal LM's decoding loop.

    python llm/export_model.py --model_name_or_path CHECKPOINT --output_path DIR
    python llm/export_model.py --model llama2 --output_path DIR --loop paddlenlp --export_format legacy

PaddleNLP's flags (``--model_name_or_path``, ``--output_path``, ``--dtype``,
``--src_length``, ``--max_length``, ``--decode_strategy``, ``--top_k``, ``--top_p``,
``--temperature``, ``--device``) and ours: ``--model`` (an embedded model),
``--export_format pir|legacy``, ``--remove_loop_assign`` (clean a PIR program before it
is saved; a legacy one is cleaned where it is loaded), ``--loop`` (this project's
``GenerationLoop``, the default, or ``paddlenlp``: PaddleNLP's own ``to_static``,
through ``compat.paddlenlp_export_patches``), ``--cache concat|static`` (the
``GenerationLoop``'s KV cache) and ``--overwrite``.

The directory has PaddleNLP's static layout (``model.json`` or ``model.pdmodel`` with
``model.pdiparams``, ``config.json``, ``generation_config.json``, the tokenizer) and
``paddlenlp_ext.json``; it appears only when complete. Bad input is one ``error:``
line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_flags import OneLineParser, add_paddlenlp_only_flags, boolean_flag, refused_flag
from .dtypes import DTYPES
from .options import CACHES, DECODE_STRATEGIES, DEVICES, EXPORT_FORMATS, LOOPS
from .quiet import quiet_paddle, quiet_paddlenlp


class ExportModelError(Exception):
    """Bad input to the export: reported on one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="export_model.py", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--model_name_or_path", help="a PaddleNLP save_pretrained checkpoint")
    add("--model", help="an embedded model: llama2 (the default) or llama2-gqa")
    add("--output_path", required=True, help="the static model directory to write")
    add("--dtype", help=f"{', '.join(DTYPES)}: the dtype the weights load in (from_pretrained's dtype); on CPU "
        "float32, also the default there (a float16 checkpoint is cast); unset on GPU: the checkpoint's")
    for name in ("src_length", "max_length"):
        add(f"--{name}", type=int, default=None,
            help="accepted for PaddleNLP's command line; lengths are run-time inputs of the exported loop")
    add("--decode_strategy", choices=DECODE_STRATEGIES, default="sampling",
        help="recorded in generation_config.json; both loops take the decoding settings as inputs at run time "
             "(the paddlenlp loop top_k only, or top_p and temperature)")
    add("--top_k", type=int, help="recorded in generation_config.json (default PaddleNLP's, 0)")
    add("--top_p", type=float,
        help="recorded in generation_config.json (default PaddleNLP's, 0.7); with --loop paddlenlp, < 1 exports "
             "top_p_sampling, which has no CPU kernel, and unset exports top-k sampling (top_p 1.0)")
    add("--temperature", type=float, help="recorded in generation_config.json (default PaddleNLP's, 0.95)")
    add("--device", choices=DEVICES, default="cpu",
        help="where the export will run: an unset --dtype loads float32 for the CPU, the checkpoint's dtype for a GPU")
    add("--export_format", choices=EXPORT_FORMATS, default="pir",
        help="pir (model.json, Paddle 3's format) or legacy (model.pdmodel, PaddleNLP 2.8 on Paddle 2.x)")
    add("--remove_loop_assign", type=boolean_flag, nargs="?", const=True, default=False,
        help="run the loop-copy cleanup on the saved PIR program (legacy programs are cleaned at load)")
    add("--loop", choices=LOOPS, default="generation_loop",
        help="the decoding loop to export: this project's GenerationLoop or PaddleNLP's own sample_d2s")
    add("--cache", default=None,
        help="KV cache of --loop generation_loop: static (preallocated, written in place; the default where the "
             "model's attention allows it) or concat (PaddleNLP's, grown every step)")
    add("--overwrite", action="store_true", help="replace a non-empty --output_path")
    add_paddlenlp_only_flags(parser)
    return parser


def _validate(args: argparse.Namespace) -> None:
    """Raises ExportModelError for bad input; ``args.dtype`` becomes the dtype to load in."""
    from .dtypes import DtypeError, load_dtype

    refused = refused_flag(args)
    if refused is not None:
        raise ExportModelError(refused)
    if args.model is not None and args.model_name_or_path is not None:
        raise ExportModelError("give --model or --model_name_or_path, not both")
    try:
        args.dtype = load_dtype(args.dtype, args.device, static=True)
    except DtypeError as error:
        raise ExportModelError(str(error)) from None
    for name in ("src_length", "max_length"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ExportModelError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.cache not in (None, *CACHES):
        raise ExportModelError(f"--cache must be one of {', '.join(CACHES)}, got {args.cache!r}")
    if args.cache == "static" and args.loop == "paddlenlp":
        raise ExportModelError(f"--cache {args.cache} needs --loop generation_loop: PaddleNLP's own loop keeps its "
                               "concat cache")
    output = Path(args.output_path)
    if output.exists() and not output.is_dir():
        raise ExportModelError(f"{output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        raise ExportModelError(f"{output} already exists and is not empty: choose a new directory or use --overwrite")


def _recorded_settings(args: argparse.Namespace) -> dict:
    """The sampling settings the export records: the flags, else PaddleNLP 2.8's
    defaults; PaddleNLP's loop exports top-p sampling only when ``--top_p`` < 1 is asked
    for (``export.py``), so unset it records the top-k export's top_p, 1.0."""
    from .decoding_settings import DEFAULTS

    settings = {name: DEFAULTS[name] if getattr(args, name) is None else getattr(args, name)
                for name in ("top_k", "top_p", "temperature")}
    if args.loop == "paddlenlp" and args.top_p is None:
        settings["top_p"] = 1.0
    return settings


def export(args: argparse.Namespace):
    """Load the model and export it as ``args`` say; raises ExportModelError for bad input."""
    from .decoding import DecodingConfig
    from .export import DirectoryExistsError, ExportError, export_generation_model
    from .models import DEFAULT_MODEL, ModelError, load_model
    from .paddle_modes import dygraph_mode

    _validate(args)
    quiet_paddlenlp()
    try:
        with dygraph_mode():
            model, tokenizer = load_model(args.model_name_or_path or args.model or DEFAULT_MODEL, dtype=args.dtype)
            decoding = DecodingConfig(args.decode_strategy, **_recorded_settings(args),
                                      eos_token_id=model.config.eos_token_id,
                                      pad_token_id=model.config.pad_token_id or 0)
            return export_generation_model(model, args.output_path, tokenizer=tokenizer, decoding=decoding,
                                           format=args.export_format, remove_loop_assign=args.remove_loop_assign,
                                           overwrite=args.overwrite, loop=args.loop, cache=args.cache)
    except DirectoryExistsError as error:  # filled by another export while this one ran
        raise ExportModelError(error.message("--overwrite")) from None
    except (ModelError, ExportError, ValueError) as error:  # ValueError: DecodingConfig's checks
        raise ExportModelError(str(error)) from None


def main(argv=None) -> int:
    from .interrupts import recording_interrupts

    args = build_parser().parse_args(argv)
    try:
        with recording_interrupts(), quiet_paddle():
            result = export(args)
    except ExportModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the staging directory is gone; nothing went into place
        print("interrupted", file=sys.stderr)
        return 130
    if result.report is not None:
        print(f"remove_loop_assign: {result.report.summary()}")
    files = sorted(path.name for path in result.directory.iterdir() if path.name.startswith("model."))
    print(f"wrote {result.directory} ({result.format}, loop {args.loop}: {', '.join(files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
