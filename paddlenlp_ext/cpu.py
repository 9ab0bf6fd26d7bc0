"""What this CPU can compute, read from ``/proc/cpuinfo`` without importing Paddle.

bfloat16 runs on oneDNN's kernels only: Paddle has no other bfloat16 ``matmul`` on CPU,
and oneDNN 3.6 (in Paddle 3.3.1) computes bfloat16 from its ``avx512_core`` ISA up
(AVX-512 F, BW, VL and DQ), which is what ``paddle.base.core.supports_bfloat16()``
checks; on a CPU without them (an AVX2-only Zen 3, say) every bfloat16 matmul raises
``dnnl::error``. The AVX512-BF16 instructions make it fast (``supports_bfloat16_fast_
performance()``), and this project's native kernels need them (``native``).
"""

from __future__ import annotations

import functools

# oneDNN's avx512_core: the least a CPU needs for oneDNN to compute bfloat16.
BFLOAT16_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})
NO_BFLOAT16 = ("this CPU has no AVX-512 (AVX-512 F, BW, VL and DQ), the least oneDNN computes bfloat16 on, and "
               "Paddle has no other bfloat16 matmul on CPU")


@functools.cache
def cpu_flags() -> frozenset:
    """The first processor's feature flags (empty where ``/proc/cpuinfo`` cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def computes_bfloat16() -> bool:
    """True when oneDNN can compute bfloat16 on this CPU (``BFLOAT16_FLAGS``)."""
    return BFLOAT16_FLAGS <= cpu_flags()


def has_avx512_bf16() -> bool:
    """True when this CPU has the AVX512-BF16 instructions (``native``'s kernels)."""
    return "avx512_bf16" in cpu_flags()
