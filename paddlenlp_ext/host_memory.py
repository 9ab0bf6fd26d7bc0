"""How the process's C allocator hands host memory to a CPU predictor's tensors, and
the pages that hold its weights (``collapse_into_huge_pages``, below).

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
import errno
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


# Transparent huge pages for what a predictor holds.
#
# A decode step reads every weight once, and on 4 KiB pages the reads stall on the TLB:
# measured on a 2-vCPU Zen 4 (THP "madvise", where Paddle's tensors are never huge), our
# float32 kernel's [1, 4096] x [4096, 11008] product took 7.95-8.11 ms on 4 KiB pages
# and 6.72-6.82 on 2 MiB pages at one thread, 5.87-5.99 and 5.49-5.59 at two (medians
# of 40 runs alternating the two copies in one process); a plain read of the matrix,
# 15 against 26 GiB/s at one thread. llama.cpp gets huge pages from the page cache of
# the file it maps. ``collapse_into_huge_pages`` turns every 2 MiB of the process's
# private anonymous memory that is wholly in RAM into one huge page (MADV_COLLAPSE,
# Linux 6.1): the same bytes at the same addresses, so nothing grows; a range with a
# page not in RAM (what free() gave back) is left alone, so no freed memory comes back
# (a range only ever read, on the kernel's shared zero page, counts as in RAM and does
# get memory of its own: not what a tensor is).
# It costs a copy of what it collapses, once: 0.1-3 s a GiB here (the slow end when the
# hypervisor backs the new pages first).

MADV_COLLAPSE = 25
HUGE_PAGE = 2 << 20
SMALL_PAGE = 4096
HUGE_PAGES_VARIABLE = "PADDLENLP_EXT_HUGE_PAGES"  # "0": leave the pages as they are
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_refused() -> str | None:
    """Why huge pages are not to be made in this process, if they are not."""
    if os.environ.get(HUGE_PAGES_VARIABLE) == "0":
        return f"{HUGE_PAGES_VARIABLE}=0"
    try:
        with open(THP_SETTING, encoding="ascii") as setting:
            if "[never]" in setting.read():  # the administrator's choice, which MADV_COLLAPSE would ignore
                return f"{THP_SETTING} is never"
    except OSError:
        return "no transparent huge pages on this system"
    return None


def private_anonymous_ranges() -> list[tuple[int, int]]:
    """``(start, end)`` of each private, writable, anonymous mapping of this process
    (the C heap and the blocks it mapped on its own), from ``/proc/self/maps``."""
    ranges = []
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        for line in maps:
            fields = line.split()
            # start-end perms offset dev inode [path]; anonymous: inode 0, no path but [heap]
            if fields[1] != "rw-p" or fields[4] != "0" or fields[5:] not in ([], ["[heap]"]):
                continue
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def collapse_into_huge_pages() -> int:
    """Collapse every aligned 2 MiB of this process's private anonymous memory whose
    pages are all in RAM into a transparent huge page (see above). Returns the bytes it
    asked the kernel to collapse (0 where refused or not supported)."""
    libc = ctypes.CDLL(None, use_errno=True)
    reason = huge_pages_refused() or (None if hasattr(libc, "mincore") else "no mincore in the C library")
    if reason is not None:
        logger.debug("host memory: no huge pages made (%s)", reason)
        return 0
    import numpy as np

    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    collapsed = 0
    for start, end in private_anonymous_ranges():
        first, last = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
        if last <= first:
            continue
        resident = ctypes.create_string_buffer((last - first) // SMALL_PAGE)
        if libc.mincore(first, last - first, resident) != 0:
            continue  # unmapped meanwhile
        whole = (np.frombuffer(resident.raw, np.uint8).reshape(-1, HUGE_PAGE // SMALL_PAGE) & 1).all(axis=1)
        # One call for each run of wholly resident huge pages.
        edges = np.flatnonzero(np.diff(np.concatenate(([0], whole.astype(np.int8), [0]))))
        for run_start, run_end in zip(edges[::2], edges[1::2]):
            address, size = first + int(run_start) * HUGE_PAGE, int(run_end - run_start) * HUGE_PAGE
            if libc.madvise(address, size, MADV_COLLAPSE) != 0:
                error = ctypes.get_errno()
                if error == errno.EINVAL:  # a kernel before 6.1, or THP disabled for the process
                    logger.debug("host memory: no huge pages made (MADV_COLLAPSE: %s)", os.strerror(error))
                    return collapsed
                continue  # EAGAIN, ENOMEM: a huge page not to be had now; the range stays as it was
            collapsed += size
    return collapsed
