"""What the loop_cache_layout tests hold a rewritten program to on Paddle Inference: the
original program run there as our runtime runs an untouched program (the fallback's:
``prepare_program(..., optimize=False)``, only the passes that keep the configuration
right, none that rewrites a loop), in our configuration.

(``loop_programs.run_inference`` makes its predictor as ``StaticGenerationModel`` does,
which rewrites the program first; this one does not.) Comparing on one runtime keeps
the test about the rewrite where Paddle itself gets a program wrong: on oneDNN an
in-place op over a transpose's result is wrong in the original program already
(``tests/test_loop_cache_layout.py``, ``ONEDNN_WRONG``).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from loop_programs import Built, save_inference

from paddlenlp_ext.inference import create_paddle_predictor, prepare_program, run_predictor
from paddlenlp_ext.program_files import load_files, save_program


def run_original_inference(built: Built, onednn: str, runs: int = 2) -> list[list[np.ndarray]]:
    """Save ``built`` as it is and run it ``runs`` times in a row on one Paddle Inference
    predictor in our configuration for ``onednn``, untouched by any loop pass."""
    with tempfile.TemporaryDirectory(prefix="cache_layout-") as staging:
        source, prefix = os.path.join(staging, "source", "model"), os.path.join(staging, "model")
        save_inference(built, source)
        loaded = load_files(source, "pir")
        prepare_program(loaded, "cpu", onednn, optimize=False)
        save_program(loaded, prefix)
        predictor = create_paddle_predictor(prefix, onednn=onednn)  # reads the files now
    return [run_predictor(predictor, built.feed) for _ in range(runs)]
