"""Where ``llm/predictor.py --mode static`` keeps the exports it makes of a dygraph model.

An export is kept under ``<home>/exports/<name>-<key>`` (``<home>`` as for the embedded
models: ``$PADDLENLP_EXT_HOME``, else ``~/.cache/paddlenlp_ext``). The key hashes
everything that changes the exported program: the model (an embedded model's build
record; a checkpoint directory's path and the size and modification time of its
files), the dtype its weights load in, the format, the KV cache asked for, the pass
at export (PIR only: a legacy program is cleaned where it is loaded), the installed
Paddle and PaddleNLP, and the source of every module of this package: any of them may
shape an exported program (the loop, the passes, the patches, what they import), and a
list kept by hand once left some out, so a change to one could serve an old export. The
decoding settings are run-time inputs, so they are not in it. Nothing here imports Paddle.

A directory appears complete or not at all (``export.staged_directory``); when two
processes export the same key at once, the second finds the first's and uses it.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import metadata
from pathlib import Path

def cached_export_directory(source: str, home: Path, *, format: str, cache: str | None,
                            remove_loop_assign: bool, dtype: str | None) -> Path:
    """The directory the export of ``source`` (an embedded model name or a checkpoint
    directory) with these settings is kept in; it exists once the export is complete."""
    from .models import KNOWN_MODELS, build_record

    if source in KNOWN_MODELS:
        model = {"embedded": build_record(source)}
        name = source
    else:
        directory = Path(source).resolve()
        files = sorted(path for path in directory.iterdir() if path.is_file())
        model = {"directory": str(directory),
                 "files": {path.name: [path.stat().st_size, path.stat().st_mtime_ns] for path in files}}
        name = directory.name
    key = {
        "model": model,
        "format": format,
        "dtype": dtype,
        "cache": cache,
        "remove_loop_assign": remove_loop_assign and format == "pir",
        "packages": {package: _version(package) for package in ("paddlepaddle", "paddlepaddle-gpu", "paddlenlp")},
        "code": code_digest(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return home / "exports" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{format}-{digest}"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def code_digest(package: Path | None = None) -> str:
    """A digest of the path and source of every ``.py`` file under ``package`` (this
    package by default)."""
    package = Path(__file__).resolve().parent if package is None else package
    digest = hashlib.sha256()
    for module in sorted(package.rglob("*.py")):
        digest.update(module.relative_to(package).as_posix().encode() + b"\0")
        digest.update(module.read_bytes() + b"\0")
    return digest.hexdigest()

