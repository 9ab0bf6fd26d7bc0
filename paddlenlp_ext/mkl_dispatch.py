"""Which code path Intel MKL, Paddle's plain CPU GEMM, takes on an AMD processor.

Paddle 3.3.1's CPU wheel runs the plain kernels' GEMMs on the MKL it ships
(``libmklml_intel.so``, MKL 2019.0.5): ``addmm``, on which our CPU configuration runs a
decode loop's weight products (``passes.loop_weight_matmul``), and every matmul when
oneDNN is off. That MKL picks its code path by the processor's vendor: on an AMD
processor it takes a generic path even when the processor has AVX2 and FMA, unless
``MKL_DEBUG_CPU_TYPE=5`` tells it to take its AVX2 path (MKL 2020 Update 1 and later
ignore the variable). Measured on this project's AMD EPYC machine, one thread:

- a [1, 4096] x [4096, 11008] product (MKL called directly, 8-10 interleaved repeats):
  16.9-17.6 GiB/s of weights read by default, 22.2-24.5 GiB/s on the AVX2 path
  (numpy's OpenBLAS: 21.4);
- a static cache's decode step at llama2-7B's layer shape (256 prompt tokens, 64 new,
  two process pairs): 47.1 and 49.8 ms by default, 40.9 and 45.7 on the AVX2 path.

At two math threads this MKL's product is no faster than at one, on either path.

``use_avx2_path_on_amd`` sets the variable for the process when (each checked by
``reason_to_leave_alone``):

1. the processor is AMD's (``vendor_id: AuthenticAMD``): on an Intel processor the
   value would hold MKL to AVX2 where it could use AVX-512;
2. it has ``avx2`` and ``fma``, the path's instructions: without them the path would
   fault;
3. the user has not set ``MKL_DEBUG_CPU_TYPE`` themselves, nor opted out
   (``PADDLENLP_EXT_MKL_AVX2=0``).

MKL reads the variable once, when it first runs a routine, so the setting takes effect
in a process that has not run an MKL routine before our predictor is made (our CLI, the
benchmark's workers, a PaddleNLP predictor script under the hook); elsewhere it changes
nothing. Child processes inherit it. The AVX2 path sums a product in another order than
the generic one: the logits may differ in their last bits, as between any two kernels;
the tests check the tokens with the setting in force (on machines where it applies).
"""

from __future__ import annotations

import logging
import os

from .cpu import AMD_VENDOR, CPUINFO, first_processor, read_cpuinfo  # read_cpuinfo: the tests replace it here

logger = logging.getLogger("paddlenlp_ext")

MKL_VARIABLE = "MKL_DEBUG_CPU_TYPE"
AVX2_PATH = "5"  # MKL 2019's value for its AVX2 code path
OPT_OUT_VARIABLE = "PADDLENLP_EXT_MKL_AVX2"  # "0": leave MKL's own choice


def reason_to_leave_alone(cpuinfo: str | None, environ) -> str | None:
    """Why MKL's own choice of code path stays (see the module docstring), or None when
    the AVX2 path is to be set. ``cpuinfo``: the text of ``/proc/cpuinfo``."""
    if environ.get(OPT_OUT_VARIABLE) == "0":  # condition 3
        return f"{OPT_OUT_VARIABLE}=0"
    if MKL_VARIABLE in environ:  # condition 3
        return f"{MKL_VARIABLE}={environ[MKL_VARIABLE]} is set"
    if cpuinfo is None:
        return f"no {CPUINFO}"
    fields = first_processor(cpuinfo)
    if fields.get("vendor_id") != AMD_VENDOR:  # condition 1
        return f"not an AMD processor ({fields.get('vendor_id', 'unknown')})"
    missing = {"avx2", "fma"} - set(fields.get("flags", "").split())
    if missing:  # condition 2
        return f"the processor lacks {', '.join(sorted(missing))}"
    return None


def use_avx2_path_on_amd() -> bool:
    """Set ``MKL_DEBUG_CPU_TYPE=5`` for the process where it applies (see the module
    docstring); returns whether it is set to that value now."""
    if os.environ.get(MKL_VARIABLE) == AVX2_PATH:  # set already (by us, or by the user)
        return True
    reason = reason_to_leave_alone(read_cpuinfo(), os.environ)
    if reason is None:
        os.environ[MKL_VARIABLE] = AVX2_PATH
    else:
        logger.debug("MKL: its own code path left as it is (%s)", reason)
    return os.environ.get(MKL_VARIABLE) == AVX2_PATH
