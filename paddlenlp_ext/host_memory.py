"""How the process's C allocator hands host memory to a CPU predictor's tensors.

Paddle 3.3.1 allocates CPU tensors with the C library's ``malloc`` and frees them when
an op's output dies: nothing caches them. glibc serves a block larger than its mmap
threshold (128 KiB at first, raised up to 32 MiB as such blocks are freed) with a fresh
``mmap`` and unmaps it on ``free``, so the kernel zero-fills every page of it again on
first touch. A decode step at llama2-7B's layer shape allocates its grown concat caches
(32 MiB each at 2048 positions), and a prefill its [batch, heads, L, L] attention
products (512 MiB at 2048 prompt tokens). Measured here on one such layer at 2048
positions, a concat loop's step took 5,000-18,000 page faults and 85-133 ms, and about
none and 56-82 ms once freed memory stayed mapped for the next step; its prefill, up to
870,000 faults and 0-2 s of 12-15 s (``docs/benchmark-llama2-7b.md``).

``keep_freed_memory`` sets glibc to serve every block from its heap (``M_MMAP_MAX`` 0),
keep freed heap memory mapped (``M_TRIM_THRESHOLD``), and give every thread the same
heap (``M_ARENA_MAX`` 1: what one of the executor's threads frees, another allocates
next), the way Paddle's own GPU allocator caches device memory. The price: a
predictor's resident memory stays at its peak between runs instead of dropping back,
and the peak grows (the heap cannot always fit a new block into freed ones: 3.4-3.8
against 2.5-2.6 GiB in those runs), and now and then a run still faults in one block
afresh (seen in the tests, not explained). Where we free something big on purpose (a
copy of the weights), ``return_free_memory`` hands the free pages back to the system
(``malloc_trim``).

It changes the whole process, so it is left alone when the user has tuned glibc's
allocator themselves (any ``MALLOC_*`` tunable or ``GLIBC_TUNABLES`` in the
environment) or opted out (``PADDLENLP_EXT_KEEP_FREED_MEMORY=0``: glibc's default
behaviour, which any tunable would change), and it does nothing where the C library is
not glibc.
"""

from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger("paddlenlp_ext")

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

# Environment variables through which a user tunes glibc's allocator (mallopt(3)).
USER_TUNABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")
OPT_OUT_VARIABLE = "PADDLENLP_EXT_KEEP_FREED_MEMORY"  # "0": leave glibc as it is

_kept_by = None  # the glibc whose allocator keep_freed_memory set, once it has


def _glibc():
    """The process's C library (its symbols as the process sees them), or None when it
    is not glibc."""
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def user_choice() -> str | None:
    """Why the user's environment says to leave glibc's allocator alone, if it does."""
    if os.environ.get(OPT_OUT_VARIABLE) == "0":
        return f"{OPT_OUT_VARIABLE}=0"
    return next((f"{name} is set" for name in USER_TUNABLES if name in os.environ), None)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory mapped for the process's next allocations (see the
    module docstring). Done once per process; returns whether the setting is in force."""
    global _kept_by
    if _kept_by is not None:
        return True
    libc = _glibc()
    reason = user_choice() or (None if libc else "not glibc")
    if reason is not None:
        logger.debug("host memory: the C allocator left as it is (%s)", reason)
        return False
    # mallopt returns 1 on success. glibc reads the trim threshold as a size_t, so -1 is
    # the largest: the heap's free top is never trimmed by free(). One arena for every
    # thread: a predictor's ops run on several threads, and a block one thread frees
    # must serve the next one another thread allocates (with an arena per thread, at
    # two math threads a concat loop's process grew to 10 GiB, faulting in fresh pages
    # every step). glibc fixes its arena limit when the limit is first needed, which
    # the test checks has not happened in our processes by the time we set it.
    if libc.mallopt(M_ARENA_MAX, 1) and libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, -1):
        _kept_by = libc
    return _kept_by is not None


def return_free_memory() -> None:
    """Give the free pages of glibc's heaps back to the system: after freeing something
    big on purpose, while ``keep_freed_memory`` is in force."""
    if _kept_by is not None:
        _kept_by.malloc_trim(0)
