"""The process-wide settings our CPU predictors make (``inference.tune_cpu_process``).

host_memory: a process running one of our CPU predictors keeps freed host memory
mapped, so a run's large tensors do not page-fault afresh every time (at llama2-7B's
layer shape that was 5,000-18,000 faults and 25-70 ms of a concat loop's step); a
process that has not asked for our predictors, or whose user tuned glibc's allocator
or opted out, is left as it was.

mkl_dispatch: on an AMD processor with AVX2 and FMA, the same processes have MKL take
its AVX2 path, unless the user chose otherwise; elsewhere MKL is left alone.

compat.batch_cpu_garbage_collection: the same processes have Paddle's executor free dead
tensors in batches (its garbage-collector thread spun through a core per freed tensor),
unless the user chose a threshold.

Each route runs in a fresh process (the settings are process-wide): 64 MiB is 16,384
pages, so a route that maps its blocks afresh faults at least that often per block."""

import ctypes
import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest
from host_memory_child import build_scale_model
from memory_child import build_legacy_model

from paddlenlp_ext import host_memory, mkl_dispatch
from paddlenlp_ext.compat.runtime import (GARBAGE_BATCH_FLAG, GARBAGE_BATCH_GB, PADDLE_DEFAULT_GARBAGE_GB,
                                          garbage_batch_left_alone)

BLOCK_PAGES = 16384
PROT_NONE = 0  # mprotect(2): no access (the mmap module has only PROT_READ and PROT_WRITE)
MADV_DONTNEED = 4  # madvise(2): drop the pages, as free() gives memory back


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("host_memory")
    build_scale_model(str(directory / "scale" / "model"))
    build_legacy_model(str(directory / "legacy"))
    build_legacy_model(str(directory / "small"), rows=64)
    return directory


def _start(route: str, directory: Path, **env) -> subprocess.Popen:
    # This process may have set MKL's variable already (a test made one of our predictors).
    chosen = ("GLIBC_TUNABLES", host_memory.OPT_OUT_VARIABLE, mkl_dispatch.MKL_VARIABLE, mkl_dispatch.OPT_OUT_VARIABLE,
              GARBAGE_BATCH_FLAG)
    child_env = {name: value for name, value in os.environ.items()
                 if not name.startswith("MALLOC_") and name not in chosen}
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("host_memory_child.py")), route,
                             str(directory)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**child_env, **env})


def _faults(child: subprocess.Popen) -> dict:
    out, err = child.communicate(timeout=600)
    assert child.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def routes(model_dir) -> dict:
    """``{route: what its child process printed}``, the children run side by side."""
    children = {
        "ours": _start("ours", model_dir),
        "ours, user-tuned": _start("ours", model_dir, MALLOC_MMAP_MAX_="65536"),  # glibc's default
        "ours, opted out": _start("ours", model_dir, PADDLENLP_EXT_KEEP_FREED_MEMORY="0"),
        "ours, garbage threshold chosen": _start("ours", model_dir, **{GARBAGE_BATCH_FLAG: "0"}),
        "hook": _start("hook", model_dir),
        "paddlenlp": _start("paddlenlp", model_dir),
    }
    return {route: _faults(child) for route, child in children.items()}


def test_our_predictors_keep_freed_memory_mapped_unless_the_user_tuned_the_allocator(routes):
    faults = routes
    # A run copies its 64 MiB input in and its 64 MiB output out.
    assert faults["ours"]["run_faults"] < BLOCK_PAGES // 8, faults
    for route in ("ours, user-tuned", "ours, opted out"):
        assert faults[route]["run_faults"] > BLOCK_PAGES, (route, faults)
    for route in ("ours", "hook"):
        assert faults[route]["block_faults"] < BLOCK_PAGES // 8, (route, faults)
        # what one thread freed serves another thread's next block (one arena)
        assert faults[route]["threads_block_faults"] < BLOCK_PAGES // 8, (route, faults)
    for route in ("ours, user-tuned", "ours, opted out", "paddlenlp"):
        assert faults[route]["block_faults"] >= BLOCK_PAGES, (route, faults)
        assert faults[route]["threads_block_faults"] >= BLOCK_PAGES, (route, faults)


def test_our_predictors_set_mkls_avx2_path_where_it_applies(routes):
    applies = mkl_dispatch.reason_to_leave_alone(mkl_dispatch.read_cpuinfo(), {}) is None
    for route in ("ours", "hook"):
        assert routes[route]["mkl_cpu_type"] == (mkl_dispatch.AVX2_PATH if applies else None), (route, routes)
    assert routes["paddlenlp"]["mkl_cpu_type"] is None, routes


def test_our_predictors_batch_the_executors_garbage_unless_the_user_chose(routes):
    for route in ("ours", "hook"):
        assert routes[route]["garbage_gb"] == GARBAGE_BATCH_GB, (route, routes)
    for route in ("paddlenlp", "ours, garbage threshold chosen"):
        assert routes[route]["garbage_gb"] == PADDLE_DEFAULT_GARBAGE_GB, (route, routes)


@pytest.mark.parametrize("environ, current, reason", [
    ({}, PADDLE_DEFAULT_GARBAGE_GB, None),
    ({GARBAGE_BATCH_FLAG: "0"}, PADDLE_DEFAULT_GARBAGE_GB, f"{GARBAGE_BATCH_FLAG}=0 is set"),
    ({}, -1.0, f"{GARBAGE_BATCH_FLAG} is -1.0 in this process"),
])
def test_the_garbage_threshold_is_left_to_the_user_who_chose_one(environ, current, reason):
    assert garbage_batch_left_alone(environ, current) == reason


AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx fma avx2\n\nprocessor\t: 1\n"


@pytest.mark.parametrize("cpuinfo, environ, reason", [
    (AMD, {}, None),
    (AMD.replace("AuthenticAMD", "GenuineIntel"), {}, "not an AMD processor (GenuineIntel)"),
    (AMD.replace(" avx2", ""), {}, "the processor lacks avx2"),
    (AMD.replace(" fma", ""), {}, "the processor lacks fma"),
    (AMD, {"MKL_DEBUG_CPU_TYPE": "4"}, "MKL_DEBUG_CPU_TYPE=4 is set"),
    (AMD, {"PADDLENLP_EXT_MKL_AVX2": "0"}, "PADDLENLP_EXT_MKL_AVX2=0"),
    (None, {}, "no /proc/cpuinfo"),
])
def test_mkls_avx2_path_only_on_amd_processors_that_have_it_unless_the_user_chose(cpuinfo, environ, reason):
    assert mkl_dispatch.reason_to_leave_alone(cpuinfo, environ) == reason


def test_use_avx2_path_sets_mkls_variable_only_where_it_applies(monkeypatch):
    for name in (mkl_dispatch.MKL_VARIABLE, mkl_dispatch.OPT_OUT_VARIABLE):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores what was there after the test
        monkeypatch.delenv(name)
    monkeypatch.setattr(mkl_dispatch, "read_cpuinfo", lambda: AMD.replace("AuthenticAMD", "GenuineIntel"))
    assert not mkl_dispatch.use_avx2_path_on_amd()
    assert mkl_dispatch.MKL_VARIABLE not in os.environ
    monkeypatch.setattr(mkl_dispatch, "read_cpuinfo", lambda: AMD)
    assert mkl_dispatch.use_avx2_path_on_amd()
    assert os.environ[mkl_dispatch.MKL_VARIABLE] == mkl_dispatch.AVX2_PATH


TRIM_CHILD = """
import sys
import numpy as np
from paddlenlp_ext import host_memory
from paddlenlp_ext.inference import load_program

def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

host_memory.keep_freed_memory()
load_program(sys.argv[1])  # imports and first-use caches, before the measure
block = np.ones(256 * 2**20 // 8)  # from glibc's heap (keep_freed_memory: no mmap), then freed: it stays
del block
before = rss_mib()
load_program(sys.argv[1])
print(before - rss_mib())
"""


def test_loading_a_program_gives_back_what_was_freed_before(model_dir):
    """A dropped predictor's weights stay mapped (keep_freed_memory); load_program
    gives them back before it allocates new ones, or a heap that cannot fit the new
    weights into the freed blocks holds both (test_memory's second model)."""
    result = subprocess.run([sys.executable, "-c", TRIM_CHILD, str(model_dir / "small")], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) > 200, result.stdout  # of the 256 MiB freed


class _Mapping:
    """A private anonymous mapping of ``size`` bytes from its first 2 MiB-aligned address
    ``start`` on, every page written with 1s, between two inaccessible pages (so that the
    kernel cannot merge it with a neighbouring mapping: /proc/self/smaps then speaks of
    it alone)."""

    def __init__(self, size: int):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._libc, self.size = libc, size
        self._length = size + 2 * host_memory.HUGE_PAGE
        self._base = libc.mmap(None, self._length, mmap.PROT_READ | mmap.PROT_WRITE,
                               mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        assert self._base not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        self.start = -(-(self._base + host_memory.SMALL_PAGE) // host_memory.HUGE_PAGE) * host_memory.HUGE_PAGE
        assert libc.mprotect(self.start - host_memory.SMALL_PAGE, host_memory.SMALL_PAGE, PROT_NONE) == 0
        assert libc.mprotect(self.start + size, host_memory.SMALL_PAGE, PROT_NONE) == 0
        ctypes.memset(self.start, 1, size)

    def byte(self, address: int) -> int:
        return ctypes.c_ubyte.from_address(address).value

    def close(self) -> None:
        self._libc.munmap(self._base, self._length)


def _madvise(address: int, size: int, advice: int) -> int:
    """``madvise(2)``'s result, 0 or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return 0 if libc.madvise(address, size, advice) == 0 else ctypes.get_errno()


def _resident_pages(address: int, size: int) -> list[bool]:
    libc = ctypes.CDLL(None)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    pages = ctypes.create_string_buffer(size // host_memory.SMALL_PAGE)
    assert libc.mincore(address, size, pages) == 0
    return [bool(page & 1) for page in pages.raw]


def _huge_kib(address: int) -> int:
    """AnonHugePages of the mapping holding ``address`` (``/proc/self/smaps``)."""
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                inside = start <= address < end
            elif inside and fields[0] == "AnonHugePages:":
                return int(fields[1])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.fixture
def collapse_works(monkeypatch):
    """Skip where this kernel cannot collapse memory into huge pages at all."""
    monkeypatch.delenv(host_memory.HUGE_PAGES_VARIABLE, raising=False)
    reason = host_memory.huge_pages_refused()
    if reason is not None:
        pytest.skip(f"no huge pages here: {reason}")
    block = _Mapping(host_memory.HUGE_PAGE)
    error = _madvise(block.start, host_memory.HUGE_PAGE, host_memory.MADV_COLLAPSE)
    block.close()
    if error:
        pytest.skip(f"MADV_COLLAPSE fails here: {os.strerror(error)}")


def test_collapse_makes_huge_pages_of_resident_memory_and_leaves_freed_pages_out(collapse_works):
    size = 8 * host_memory.HUGE_PAGE
    block = _Mapping(size)
    first = block.start
    freed = first + host_memory.HUGE_PAGE + 5 * host_memory.SMALL_PAGE  # one page of the second 2 MiB
    assert _madvise(freed, host_memory.SMALL_PAGE, MADV_DONTNEED) == 0
    if "[always]" not in Path(host_memory.THP_SETTING).read_text():
        assert _huge_kib(first) == 0  # nothing made these huge (with "always", the faults did)
    assert host_memory.collapse_into_huge_pages() >= 6 * host_memory.HUGE_PAGE
    # Every 2 MiB of the mapping but the one with the freed page.
    assert _huge_kib(first) == (size // host_memory.HUGE_PAGE - 1) * host_memory.HUGE_PAGE // 1024
    pages = _resident_pages(first, 2 * host_memory.HUGE_PAGE)
    assert all(pages[:512]) and not pages[512 + 5], "the freed page came back"
    assert block.byte(first) == 1 and block.byte(first + size - 1) == 1  # the same bytes
    block.close()


def test_collapse_leaves_memory_alone_when_the_user_opted_out(collapse_works, monkeypatch):
    block = _Mapping(4 * host_memory.HUGE_PAGE)
    assert _madvise(block.start + 5 * host_memory.SMALL_PAGE, host_memory.SMALL_PAGE, MADV_DONTNEED) == 0
    before = _huge_kib(block.start)  # (with THP "always", the other 2 MiB ranges are huge already)
    monkeypatch.setenv(host_memory.HUGE_PAGES_VARIABLE, "0")
    assert host_memory.collapse_into_huge_pages() == 0
    assert _huge_kib(block.start) == before
    block.close()


@pytest.mark.parametrize("setting, environ, reason", [
    ("always [madvise] never\n", {}, None),
    ("[always] madvise never\n", {}, None),
    ("always madvise [never]\n", {}, "{path} is never"),
    (None, {}, "no transparent huge pages on this system"),
    ("always [madvise] never\n", {"PADDLENLP_EXT_HUGE_PAGES": "0"}, "PADDLENLP_EXT_HUGE_PAGES=0"),
])
def test_huge_pages_refused_where_the_system_or_the_user_says_no(setting, environ, reason, tmp_path, monkeypatch):
    path = tmp_path / "enabled"
    if setting is not None:
        path.write_text(setting)
    monkeypatch.setattr(host_memory, "THP_SETTING", str(path))
    monkeypatch.delenv(host_memory.HUGE_PAGES_VARIABLE, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert host_memory.huge_pages_refused() == (reason.format(path=path) if reason else None)


class _Config:
    """What ``settle_cpu_weights`` asks of a Paddle Inference config."""

    def __init__(self, params_file: str, gpu: bool = False):
        self._params_file, self._gpu = params_file, gpu

    def params_file(self) -> str:
        return self._params_file

    def use_gpu(self) -> bool:
        return self._gpu


def test_huge_pages_only_for_cpu_weights_large_enough_to_pay_for_the_copy(tmp_path, monkeypatch):
    from paddlenlp_ext import paddle_config

    calls = []
    monkeypatch.setattr(host_memory, "collapse_into_huge_pages", lambda: calls.append(1) or 0)
    monkeypatch.setattr(host_memory, "return_free_memory", lambda: None)
    small, large = tmp_path / "small.pdiparams", tmp_path / "large.pdiparams"
    for path, size in ((small, paddle_config.HUGE_PAGES_FROM_BYTES - 1), (large, paddle_config.HUGE_PAGES_FROM_BYTES)):
        with open(path, "wb") as params:
            params.truncate(size)  # sparse: the size is what counts
    expected = {(str(small), False): 0, (str(large), False): 1, (str(large), True): 0, ("", False): 0,
                (str(tmp_path / "missing"), False): 0}
    for (path, gpu), collapses in expected.items():
        calls.clear()
        paddle_config.settle_cpu_weights(_Config(path, gpu))
        assert len(calls) == collapses, (path, gpu)
