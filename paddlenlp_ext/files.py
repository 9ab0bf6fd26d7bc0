"""A static model directory's file names, and writing files so that a file under its
final name is always complete. Imports no Paddle: the predictor checks paths with it
first."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .interrupts import raise_if_interrupted

# Where the package keeps what it builds (embedded models, exports, native kernels).
HOME_VARIABLE = "PADDLENLP_EXT_HOME"
DEFAULT_HOME = "~/.cache/paddlenlp_ext"

MODEL_PREFIX = "model"
PIR_FILE, LEGACY_FILE, PARAMS_FILE = "model.json", "model.pdmodel", "model.pdiparams"


def cache_home(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$PADDLENLP_EXT_HOME``, else ``~/.cache/paddlenlp_ext``."""
    home = cache_dir if cache_dir is not None else os.environ.get(HOME_VARIABLE) or DEFAULT_HOME
    return Path(home).expanduser()


def write_atomically(path: str | os.PathLike, write) -> None:
    """Call ``write(temporary path)`` beside ``path``, then rename it into place.

    An interrupted or failed write leaves nothing behind. The file gets the permissions
    a plain ``open(path, "w")`` would (temporary files are created private).
    """
    target = Path(path)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(partial)
        raise_if_interrupted()  # a Ctrl-C a library swallowed: nothing goes into place
        os.chmod(partial, 0o666 & ~current_umask())
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
