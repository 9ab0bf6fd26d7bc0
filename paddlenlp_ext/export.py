"""Export a decoding loop in the legacy format and load it back as Paddle 3.x does."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import paddle



class ExportError(Exception):
    """An export that cannot be written: one line says why."""


@contextlib.contextmanager
def staged_directory(output_dir: str | os.PathLike, overwrite: bool = False):
    """Yield a hidden sibling directory to write into; it becomes ``output_dir`` only
    when the block finishes, so a half-written export never looks complete.

    A non-empty ``output_dir`` is an error unless ``overwrite``; then it is replaced
    as a whole, after the new export is complete.
    """
    target = Path(output_dir)
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ExportError(f"{target} already exists and is not empty (choose a new directory or overwrite it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, retired / "previous")
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)


@contextlib.contextmanager
def dygraph_mode():
    """Run a block in dynamic mode and return to the mode the caller was in."""
    was_static = not paddle.in_dynamic_mode()
    paddle.disable_static()
    try:
        yield
    finally:
        if was_static:
            paddle.enable_static()
