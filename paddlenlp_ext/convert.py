"""Convert a static model directory to the PIR format, with its loop copies removed.

    python -m paddlenlp_ext.convert SRC_DIR DST_DIR [--force]

SRC_DIR is a static model directory: ``model.pdmodel`` (legacy) or ``model.json``
(PIR) with ``model.pdiparams``, and PaddleNLP's configs, tokenizer files and
``paddlenlp_ext.json`` beside them. Its program is loaded as PIR (a legacy program is
translated, as Paddle 3.x does at load time), the passes of a saved program run on it
(``passes.pipeline.saving_passes``: ``remove_loop_assign``, then ``guard_onednn_inplace``,
so that Paddle Inference's default CPU config, oneDNN on, decodes it right), and DST_DIR gets ``model.json`` + ``model.pdiparams``, which Paddle
Inference loads without translating and without the copies. A PIR source is converted too: the pass applies to
PIR programs as well (it removes nothing from a loop that has no copies), so the
result is the same kind of directory whatever the source.

Every other file of SRC_DIR is copied, except its ``model.*`` files (the old program,
its parameters and the ``.pdiparams.info`` that describes them: DST_DIR's are written
anew) and ``paddlenlp_ext.json``, which is rewritten: format ``pir``, the pass's report,
the guard's summary, and where and with what the conversion was made.

SRC_DIR is only read. DST_DIR must not be SRC_DIR, inside it, or contain it. A
non-empty DST_DIR is refused unless ``--force``; then it is replaced as a whole, once
the new directory is complete (it is written to a hidden staging directory first).
Bad input is one ``error:`` line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_flags import OneLineParser
from .quiet import library_quiet, quiet_paddle

if TYPE_CHECKING:
    from .passes.report import LoopAssignReport


class ConvertError(Exception):
    """A conversion that cannot be made: one line says why (exit code 2)."""


@dataclass(frozen=True)
class ConversionResult:
    directory: Path
    source_format: str  # "legacy" or "pir"
    report: LoopAssignReport  # the pass on the converted program


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m paddlenlp_ext.convert", description=__doc__.splitlines()[0])
    parser.add_argument("src_dir", metavar="SRC_DIR",
                        help="a static model directory (model.pdmodel or model.json, with model.pdiparams)")
    parser.add_argument("dst_dir", metavar="DST_DIR", help="where to write the PIR model directory")
    parser.add_argument("--force", action="store_true", help="replace DST_DIR if it exists and is not empty")
    return parser


def convert(src_dir, dst_dir, *, force: bool = False) -> ConversionResult:
    """Write ``dst_dir`` as SRC's model in the PIR format, after ``remove_loop_assign``."""
    # Imported here, not at the top: they import Paddle, which main() configures first.
    from .export import METADATA_FILE, DirectoryExistsError, ExportError, library_versions, staged_directory
    from .files import MODEL_PREFIX
    from .program_files import ModelDirectoryError, load_program, model_format, save_program
    from .passes.pipeline import run_passes, saving_passes

    src, dst = Path(src_dir), Path(dst_dir)
    try:
        source_format = model_format(src)
    except ModelDirectoryError as error:
        raise ConvertError(str(error)) from None
    _check_destination(src, dst, force)
    metadata = _read_metadata(src / METADATA_FILE)
    # Everything that can fail on bad input happens before the first write, so that a
    # corrupt source leaves nothing behind, not even DST's parent directories.
    try:
        loaded = load_program(src)
    except ModelDirectoryError as error:
        raise ConvertError(str(error)) from None
    # The directory leaves our hands: Paddle Inference's default CPU config (oneDNN and
    # its inplace pass) must run it right too.
    try:
        pipeline = run_passes(loaded.program, loaded.outputs, saving_passes())
    except Exception as error:  # a pass failing on a program shape we have not met: a defect of ours
        from .errors import error_line

        raise ConvertError(f"cannot convert {src}: a pass failed on its program ({error_line(error)}); "
                           f"run {src} as it is and report this") from None
    report, guarded = pipeline.get("remove_loop_assign"), pipeline.get("onednn_inplace_guard")
    metadata.update({
        "format": "pir",
        "remove_loop_assign": "convert",
        "report": report.record(),
        "onednn_guard": guarded.summary(),
        "conversion": {"source": str(src.resolve()), "source_format": source_format, "versions": library_versions()},
    })
    try:
        with staged_directory(dst, overwrite=force) as staging:
            save_program(loaded, str(staging / MODEL_PREFIX))
            loaded.release()  # one copy of the weights: the check below loads them again
            _check_loads_on_paddle_inference(staging, src)
            # DST's model files are the ones just saved; its metadata is written below.
            _copy_files(src, staging, skip=lambda name: name.startswith(MODEL_PREFIX + ".") or name == METADATA_FILE)
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    except DirectoryExistsError as error:  # filled by another process while we converted
        raise ConvertError(error.message("--force")) from None
    except ExportError as error:  # DST is a file
        raise ConvertError(str(error)) from None
    except OSError as error:  # unwritable DST, unreadable companion file, full disk
        raise ConvertError(f"cannot write {dst}: {error}") from None
    return ConversionResult(dst, source_format, report)


def _check_loads_on_paddle_inference(staging: Path, src: Path) -> None:
    """Refuse to write a directory whose program Paddle Inference cannot load, with its
    default config (what a user of DST runs): the source runs as it is."""
    from paddle import inference

    from .errors import error_line
    from .files import PARAMS_FILE, PIR_FILE

    config = inference.Config(str(staging / PIR_FILE), str(staging / PARAMS_FILE))
    config.disable_glog_info()
    try:
        with library_quiet():
            inference.create_predictor(config)
    except Exception as error:  # Paddle raises what its C++ code throws
        raise ConvertError(f"the converted program does not load on Paddle Inference ({error_line(error)}); "
                           f"run {src} as it is") from None


def _check_destination(src: Path, dst: Path, force: bool) -> None:
    # Resolved, so that a symlink or "src/.." spelling cannot hide that the two overlap.
    source, target = src.resolve(), dst.resolve()
    if target == source:
        raise ConvertError(f"{dst} is the source directory: choose a destination outside it")
    if source in target.parents:
        raise ConvertError(f"{dst} is inside the source directory {src}: choose a destination outside it")
    if target in source.parents:
        # --force would replace DST, and the source with it
        raise ConvertError(f"{src} is inside {dst}: choose a destination that does not contain the source")
    # staged_directory checks this too, but only once the model is loaded; here the
    # refusal is immediate and names the flag that overrides it.
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise ConvertError(f"{dst} already exists and is not empty: choose a new directory or use --force")


def _read_metadata(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConvertError(f"{path}: cannot read it: {error}") from None
    if not isinstance(metadata, dict):
        raise ConvertError(f"{path}: expected a JSON object, found {type(metadata).__name__}")
    return metadata


def _copy_files(src: Path, staging: Path, skip) -> None:
    for entry in sorted(src.iterdir()):
        if skip(entry.name):
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name)
        else:
            shutil.copy2(entry, staging / entry.name)


def main(argv=None) -> int:
    from .interrupts import recording_interrupts

    args = build_parser().parse_args(argv)
    try:
        with recording_interrupts(), quiet_paddle():  # an error must stay one line on stderr
            result = convert(args.src_dir, args.dst_dir, force=args.force)
    except ConvertError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the staging directory is gone; nothing went into place
        print("interrupted", file=sys.stderr)
        return 130
    print(f"remove_loop_assign: {result.report.summary()}")
    print(f"wrote {result.directory} (pir: model.json, model.pdiparams) from {args.src_dir} ({result.source_format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
