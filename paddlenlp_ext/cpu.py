"""What this CPU is and can compute, read from ``/proc/cpuinfo`` without importing Paddle.

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


CPUINFO = "/proc/cpuinfo"
AMD_VENDOR = "AuthenticAMD"  # an AMD processor's ``vendor_id``


def read_cpuinfo() -> str | None:
    """The text of ``/proc/cpuinfo``, or None where there is none."""
    try:
        with open(CPUINFO, encoding="ascii", errors="replace") as info:
            return info.read()
    except OSError:  # not Linux
        return None


def first_processor(cpuinfo: str | None) -> dict:
    """The fields of the first processor's entry of ``cpuinfo`` (its text), by name."""
    first = (cpuinfo or "").split("\n\n", 1)[0]
    fields = (line.split(":", 1) for line in first.splitlines() if ":" in line)
    return {name.strip(): value.strip() for name, value in fields}


@functools.cache
def cpu_flags() -> frozenset:
    """The first processor's feature flags (empty where ``/proc/cpuinfo`` cannot be read)."""
    return frozenset(first_processor(read_cpuinfo()).get("flags", "").split())


def computes_bfloat16() -> bool:
    """True when oneDNN can compute bfloat16 on this CPU (``BFLOAT16_FLAGS``)."""
    return BFLOAT16_FLAGS <= cpu_flags()


def has_avx512_bf16() -> bool:
    """True when this CPU has the AVX512-BF16 instructions (``native``'s kernels)."""
    return "avx512_bf16" in cpu_flags()


@functools.cache
def is_amd() -> bool:
    """True on an AMD processor (``vendor_id: AuthenticAMD``)."""
    return first_processor(read_cpuinfo()).get("vendor_id") == AMD_VENDOR
