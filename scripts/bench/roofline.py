"""The machine's limits and what a llama needs of them: the benchmark's roofline columns.

Measured once per run, in a child process whose BLAS uses the run's thread count
(``python roofline.py THREADS`` prints the JSON):

- ``bandwidth_gib_s``: memory read bandwidth: the fastest of the one-row products here
  (``bandwidth_readers_gib_s``, each the best of 5 over a matrix far larger than any
  cache; such a product reads the matrix once and does 2 flops per 2-4 bytes, so memory
  bounds it): numpy's float32 GEMV (its BLAS), Paddle's float32 ``x @ W^T`` (MKL, on
  the code path our predictors set: ``mkl_dispatch``; the float32 decode loop's
  products) and, where this CPU and build have it, our bfloat16 GEMV kernel (the
  bfloat16 loop's). One reader alone understates what a core can read: on this
  project's Zen 4, one thread, numpy's read 17.5-19.4 GiB/s, MKL's 24.2-24.4, our
  kernel's 23.5-25.3 (``docs/benchmark-llama2-7b*.json``);
- ``gemm_gflops``: float32 GEMM throughput: the best of 3 numpy 4096-square products;
- ``gemm_gflops_bfloat16``: bfloat16 GEMM throughput (None where oneDNN computes no
  bfloat16, ``paddlenlp_ext.cpu``): the best of 3 such products in
  bfloat16 on Paddle's oneDNN matmul (a static program on the Executor; the second
  matrix read transposed, as a bfloat16 model's weights are stored), the kernel a
  bfloat16 prefill's products run on.

Per row (``bounds``), from the model's shape and the row's dtype (``DTYPE_BYTES``: 4
bytes a value in float32, 2 in bfloat16; a bfloat16 model holds every parameter and
its KV cache in bfloat16):

- ``weights_mib``: every parameter, at the dtype's size;
- ``memory_bound_ms_per_token``: the bytes one decode step must read, over the
  bandwidth: every weight but the embedding table (a step reads one row of it per
  sequence), plus the KV cache of the batch at the average decoding length (context +
  new_tokens / 2): 2 * layers * batch * length * kv_heads * head_dim values; all at
  the dtype's size, so a bfloat16 step's bound is half float32's. The bandwidth is the
  same for either: bytes are bytes;
- ``prefill_bound_ms``: the prefill's matmul FLOPs over ``gemm_gflops``: per layer the
  projections, 2 * batch * context * (2 h^2 + 2 h kv_dim), and attention's two products
  at full context x context (what the kernels compute), 4 * batch * context^2 * h; the
  MLP, 6 * h * intermediate a position, on every position but in the last layer, where
  only the last position's output is read; and the lm_head for the last position: what
  the first token needs, and what ours (``paddlenlp_ext.last_position``) and llama.cpp
  compute; over the row's dtype's GEMM throughput (``prefill_bound_gemm_dtype``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# q8_0: llama.cpp's 8-bit blocks, 32 int8 values and one float16 scale; float16: its KV
# cache (the peers', bench.peers).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "q8_0": 34 / 32}
# The GEMM throughput of each dtype, in ``limits``; q8_0's prefill is held to float32's
# (no int8 GEMM is measured here).
GEMM_LIMIT = {"float32": "gemm_gflops", "bfloat16": "gemm_gflops_bfloat16", "q8_0": "gemm_gflops"}
# The products measured: a full run's, and --quick's (an eighth of the GEMM work and a
# quarter of the bytes, still 8 times any cache here: a minute less per run, for a run
# whose figures are not the ones reported).
SIZES = {"full": {"bandwidth_matrix": 16384,  # 16384^2 float32: 1 GiB
                  "gemm": 4096},
         "quick": {"bandwidth_matrix": 8192, "gemm": 2048}}
GEMM_REPEATS = 8


def measure_in_process(sizes: dict) -> dict:
    import numpy as np

    gemm_size = sizes["gemm"]
    readers = _bandwidth_readers(sizes["bandwidth_matrix"])
    square = np.random.default_rng(1).random((gemm_size, gemm_size), dtype=np.float32)
    square @ square
    gemm = min(_seconds(lambda: square @ square) for _ in range(3))
    from paddlenlp_ext.cpu import computes_bfloat16

    # None on a CPU oneDNN computes no bfloat16 on (where the benchmark runs no bfloat16 row)
    bfloat16 = round(2 * gemm_size**3 / _bfloat16_gemm_seconds(gemm_size) / 1e9, 1) if computes_bfloat16() else None
    return {"bandwidth_gib_s": max(readers.values()), "bandwidth_readers_gib_s": readers,
            "gemm_gflops": round(2 * gemm_size**3 / gemm / 1e9, 1), "gemm_gflops_bfloat16": bfloat16,
            "sizes": sizes}


def _bandwidth_readers(size: int) -> dict:
    """``{reader: GiB/s}``: the best of 5 one-row products over a matrix of ``size``
    squared (a full run's: float32 1 GiB, bfloat16 0.5 GiB), one matrix in memory at a
    time."""
    import numpy as np

    from paddlenlp_ext import mkl_dispatch

    mkl_dispatch.use_avx2_path_on_amd()  # before MKL first runs, as our predictors do
    import paddle
    from paddlenlp_ext.native import load_bfloat16_gemv

    paddle.base.core.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    readers = {}
    matrix = np.random.default_rng(0).random((size, size), dtype=np.float32)
    vector = np.ones(size, np.float32)
    readers["numpy_float32_gemv"] = _read_speed(lambda: matrix @ vector, matrix.nbytes)
    weight = paddle.to_tensor(matrix)
    del matrix
    row = paddle.ones([1, size])
    readers["paddle_float32_matmul"] = _read_speed(lambda: paddle.matmul(row, weight, transpose_y=True),
                                                   4 * weight.size)
    kernel, _ = load_bfloat16_gemv()
    if kernel is not None:
        weight = weight.astype("bfloat16")
        row = row.astype("bfloat16")
        readers["bfloat16_gemv_kernel"] = _read_speed(lambda: kernel(row, weight), 2 * weight.size)
    return readers


def _read_speed(product, nbytes: int) -> float:
    product()  # first touch
    return round(nbytes / 2**30 / min(_seconds(product) for _ in range(5)), 2)


def _bfloat16_gemm_seconds(gemm_size: int) -> float:
    """The best of 3 bfloat16 [gemm_size]^2 products (``transpose_y``) on Paddle's
    Executor, which runs them on oneDNN (dygraph has no bfloat16 CPU matmul)."""
    import numpy as np
    import paddle

    paddle.enable_static()
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        a = paddle.static.data("a", [gemm_size, gemm_size], "float32")
        b = paddle.static.data("b", [gemm_size, gemm_size], "float32")
        x, b16 = paddle.cast(a, "bfloat16"), paddle.cast(b, "bfloat16")
        for _ in range(GEMM_REPEATS):  # chained, so no pass can merge them (entries in [0, 1): gemm_size**8 fits)
            x = paddle.matmul(x, b16, transpose_y=True)
        done = paddle.cast(x[:1, :1], "float32")
    executor = paddle.static.Executor(paddle.CPUPlace())
    rng = np.random.default_rng(2)
    feed = {name: rng.random((gemm_size, gemm_size), dtype=np.float32) for name in ("a", "b")}
    run = lambda: executor.run(main, feed=feed, fetch_list=[done])  # noqa: E731
    run()
    # GEMM_REPEATS products a run amortize the casts and the feed's copies
    return min(_seconds(run) for _ in range(3)) / GEMM_REPEATS


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def measure_machine(threads: int, quick: bool = False) -> dict:
    """``{"bandwidth_gib_s", "gemm_gflops", ...}`` with ``threads`` BLAS threads, on
    ``SIZES``' quick or full products, measured in a child process (BLAS reads its
    thread count when it loads)."""
    env = {**os.environ, **{name: str(threads) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}}
    command = [sys.executable, str(Path(__file__).resolve()), "quick" if quick else "full"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _kv_dim(settings: dict) -> int:
    """The width of a layer's keys (and values): key/value heads times the head size."""
    return settings["kv_heads"] * (settings["hidden_size"] // settings["heads"])


def weight_bytes(settings: dict, dtype: str) -> dict:
    """``{"all": every parameter, "embedding": the embedding table}`` in bytes, each
    value held in ``dtype``."""
    h, layers, vocab = settings["hidden_size"], settings["layers"], settings["vocab_size"]
    kv_dim = _kv_dim(settings)
    per_layer = 2 * h * h + 2 * h * kv_dim + 3 * h * settings["intermediate_size"] + 2 * h  # + the two norms
    embedding = vocab * h
    size = DTYPE_BYTES[dtype]
    return {"all": size * (layers * per_layer + 2 * embedding + h), "embedding": size * embedding}


def bounds(settings: dict, machine: dict, context: int, dtype: str, kv_dtype: str | None = None) -> dict:
    """The roofline columns but the ratios of a row of ``dtype`` (see the module docstring),
    its KV cache held in ``kv_dtype`` (default ``dtype``; llama.cpp's is float16 whatever
    its weights')."""
    h, layers, batch = settings["hidden_size"], settings["layers"], settings["batch_size"]
    kv_dim = _kv_dim(settings)
    weights = weight_bytes(settings, dtype)
    length = context + settings["new_tokens"] / 2
    kv_size = DTYPE_BYTES[kv_dtype or dtype]
    step_bytes = weights["all"] - weights["embedding"] + kv_size * 2 * layers * batch * length * kv_dim
    attention_flops = 2 * batch * context * (2 * h * h + 2 * h * kv_dim) + 4 * batch * context**2 * h
    mlp_flops = 6 * h * settings["intermediate_size"]  # a position's
    mlp_positions = (layers - 1) * batch * context + batch
    prefill_flops = layers * attention_flops + mlp_positions * mlp_flops + 2 * batch * h * settings["vocab_size"]
    gemm = machine[GEMM_LIMIT[dtype]]  # None: not measured (no bfloat16 on this CPU)
    return {"weights_mib": round(weights["all"] / 2**20, 1),
            "memory_bound_ms_per_token": round(step_bytes / (machine["bandwidth_gib_s"] * 2**30) * 1e3, 4),
            "prefill_bound_ms": None if gemm is None else round(prefill_flops / (gemm * 1e9) * 1e3, 4),
            "prefill_bound_gemm_dtype": "float32" if dtype == "q8_0" else dtype}


if __name__ == "__main__":
    print(json.dumps(measure_in_process(SIZES[sys.argv[1]])))
