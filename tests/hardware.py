"""Skips for the tests that need what this CPU may not have (``paddlenlp_ext.cpu``):
on such a CPU the product refuses the route in one line instead (test_dtypes)."""

import pytest

from paddlenlp_ext.cpu import NO_BFLOAT16, computes_bfloat16, has_avx512_bf16

requires_bfloat16 = pytest.mark.skipif(not computes_bfloat16(), reason=f"computes in bfloat16: {NO_BFLOAT16}")
requires_avx512_bf16 = pytest.mark.skipif(not has_avx512_bf16(), reason="this CPU has no AVX512-BF16")
