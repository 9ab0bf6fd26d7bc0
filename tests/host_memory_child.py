"""Page faults in a fresh process once a predictor is made by one route:
``python host_memory_child.py ROUTE DIR`` prints ``{"run_faults": ..., "block_faults": ...,
"threads_block_faults": ..., "mkl_cpu_type": ..., "garbage_gb": ...}``:
the fewest minor page faults of a predictor's runs 4 to 9 on a 64 MiB input (glibc's
heap grows for the first few runs, until its free blocks fit what a run allocates, and
in about one suite run of five a later run still faulted one block's pages: not
explained), those of allocating, filling and freeing a 64 MiB block with ``malloc``
for the second time, those of one thread's block after another's (``_threads_block_faults``),
``MKL_DEBUG_CPU_TYPE`` as the route left it (``mkl_dispatch``), and the executor's
garbage-collection threshold (``compat.batch_cpu_garbage_collection``).

Routes: ``ours`` (``create_paddle_predictor`` on DIR's ``scale/model.json``), ``hook``
(PaddleNLP's static config on DIR's ``legacy`` loop model under ``paddlenlp_ext.enable()``),
``paddlenlp`` (the same config without the hook).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

import numpy as np

ROWS, COLUMNS = 2048, 8192  # a float32 block of 64 MiB: 16,384 pages of 4 KiB
BLOCK_BYTES = ROWS * COLUMNS * 4
LIBC = ctypes.CDLL(None)
LIBC.malloc.restype = ctypes.c_void_p


def build_scale_model(prefix: str) -> None:
    """``out = 3 * x + 1`` for x of shape [-1, COLUMNS], saved as PIR."""
    import paddle

    from paddlenlp_ext.paddle_modes import static_mode

    with static_mode(), paddle.pir_utils.IrGuard():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [-1, COLUMNS], "float32")
            out = x * 3.0 + 1.0
        paddle.static.save_inference_model(prefix, [x], [out], paddle.static.Executor(paddle.CPUPlace()),
                                           program=main)


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _filled_block() -> int:
    """A 64 MiB block from C's ``malloc`` (numpy asks for huge pages, which fault 512
    times less), every page written."""
    block = LIBC.malloc(ctypes.c_size_t(BLOCK_BYTES))
    ctypes.memset(block, 1, BLOCK_BYTES)
    return block


def _free(block: int) -> None:
    LIBC.free(ctypes.c_void_p(block))


def _block_faults() -> int:
    """Faults of a 64 MiB block allocated, filled and freed, measured the second time."""
    for _ in range(2):
        before = _faults()
        _free(_filled_block())
    return _faults() - before


def _threads_block_faults() -> int:
    """Faults of a 64 MiB block allocated and filled in one thread after another thread,
    still alive, allocated, filled and freed one: as a predictor's ops run on several
    threads, one frees what another allocates next (glibc gives each thread an arena of
    its own unless their number is capped)."""
    import threading

    freed, done, faults = threading.Event(), threading.Event(), []

    def first():
        _free(_filled_block())
        freed.set()
        done.wait()

    def second():
        freed.wait()
        before = _faults()
        block = _filled_block()
        faults.append(_faults() - before)
        _free(block)
        done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return faults[0]


def main(route: str, directory: str) -> None:
    from paddle import inference

    import paddlenlp_ext
    from paddlenlp_ext.inference import create_paddle_predictor, run_predictor
    from paddlenlp_ext.paddle_config import paddlenlp_static_config

    run_faults = None
    if route == "ours":
        predictor = create_paddle_predictor(f"{directory}/scale/model", "cpu")
        x = {"x": np.full([ROWS, COLUMNS], 0.5, "float32")}
        faults = []
        for _ in range(9):
            before = _faults()
            out = run_predictor(predictor, x)[0]
            del out
            faults.append(_faults() - before)
        run_faults = min(faults[3:])
    elif route == "hook":
        with paddlenlp_ext.enable():
            predictor = inference.create_predictor(paddlenlp_static_config(f"{directory}/legacy"))
    elif route == "paddlenlp":
        predictor = inference.create_predictor(paddlenlp_static_config(f"{directory}/legacy"))
    else:
        raise SystemExit(f"unknown route {route!r}")
    import paddle

    from paddlenlp_ext.compat.runtime import GARBAGE_BATCH_FLAG

    print(json.dumps({"run_faults": run_faults, "block_faults": _block_faults(),
                      "threads_block_faults": _threads_block_faults(),
                      "mkl_cpu_type": os.environ.get("MKL_DEBUG_CPU_TYPE"),
                      "garbage_gb": paddle.get_flags([GARBAGE_BATCH_FLAG])[GARBAGE_BATCH_FLAG]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
