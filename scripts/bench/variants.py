"""The benchmark's variants: one ``run_<variant>()`` each, turning an export into the files a predictor is made of."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .models import EXPORTS
from .peers import PEERS, prepare_peer
from .roofline import DTYPE_BYTES

# The baseline first: what a PaddleNLP 2.8 user on Paddle 3.x runs today. All float32.
VARIANTS = ("paddlenlp-default", "legacy", "legacy+pr9002", "legacy+pass", "pir", "static-cache")
# The bfloat16 variant (``--dtypes bfloat16``): the same weights cast, as a bfloat16 model exports.
BF16 = "bf16"
# The variants of each dtype (``--dtypes``); ``--variants`` chooses among float32's.
DTYPE_VARIANTS = {"float32": VARIANTS, "bfloat16": (BF16,)}
BASELINE = "paddlenlp-default"
PADDLENLP_RUNTIME = "PaddleNLP's static predictor config: legacy program, Paddle's defaults (old IR, oneDNN)"
OUR_RUNTIME = "StaticGenerationModel's config (create_paddle_predictor)"


@dataclass
class Variant:
    name: str
    runtime: str  # which Paddle Inference configuration runs it
    predictor_spec: tuple  # (kind, path): what worker.create_predictor makes the predictor of
    copies: int
    copy_sources: list  # (shape, bytes per element) of every copy left in the loop
    pass_ms: float | None
    pass_report: str | None
    dtype: str = "float32"  # the weights' and the computation's
    peer: bool = False  # another engine (bench.peers): its tokens are checked against its own runs only
    kv_dtype: str | None = None  # its KV cache's, where not ``dtype``


def run_paddlenlp_default(exports: dict, workdir: Path, settings: dict) -> Variant:
    """The legacy export as PaddleNLP's static predictor runs it: the ``.pdmodel`` itself,
    copies and all, on Paddle Inference with PaddleNLP's config."""
    from paddlenlp_ext.program_files import load_program

    translated = load_program(exports["legacy"]).program  # to count the copies the .pdmodel's loop has
    return Variant(BASELINE, PADDLENLP_RUNTIME, ("paddlenlp", str(exports["legacy"])), *_copies(translated),
                   None, None)


def run_legacy(exports: dict, workdir: Path, settings: dict) -> Variant:
    """The legacy export as Paddle 3.x translates it: every loop copy left in."""
    return _prepare("legacy", exports["legacy"], workdir, settings, rewrite=None)


def run_legacy_pr9002(exports: dict, workdir: Path, settings: dict) -> Variant:
    """The translated legacy export after PaddleNLP PR #9002's rule."""
    from paddlenlp_ext import remove_loop_assign_pr9002

    return _prepare("legacy+pr9002", exports["legacy"], workdir, settings,
                    rewrite=lambda loaded: remove_loop_assign_pr9002(loaded.program))


def run_legacy_pass(exports: dict, workdir: Path, settings: dict) -> Variant:
    """The translated legacy export after ``remove_loop_assign``."""
    from paddlenlp_ext import remove_loop_assign

    return _prepare("legacy+pass", exports["legacy"], workdir, settings,
                    rewrite=lambda loaded: remove_loop_assign(loaded.program, outputs=loaded.outputs))


def run_pir(exports: dict, workdir: Path, settings: dict) -> Variant:
    """The PIR-native export, loaded as it is: the copy-free reference."""
    return _prepare("pir", exports["pir"], workdir, settings, rewrite=None)


def run_static_cache(exports: dict, workdir: Path, settings: dict) -> Variant:
    """GenerationLoop's static KV cache (written in place, no per-step concat), exported
    in the legacy format and cleaned by ``remove_loop_assign``, as legacy+pass."""
    from paddlenlp_ext import remove_loop_assign

    return _prepare("static-cache", exports["static-cache"], workdir, settings,
                    rewrite=lambda loaded: remove_loop_assign(loaded.program, outputs=loaded.outputs))


def run_bf16(exports: dict, workdir: Path, settings: dict) -> Variant:
    """The same weights cast to bfloat16 and exported as a bfloat16 model exports (PIR,
    weight matrices transposed: ``paddlenlp_ext.export``; the static cache on our loop),
    loaded as it is (a PIR export has no loop copies), run by our predictor."""
    return _prepare(BF16, exports["bf16"], workdir, settings, rewrite=None, dtype="bfloat16")


def run_peer(name: str):
    """``run_<peer>()`` for peer ``name`` (``bench.peers``): its files, written from the
    float32 weights, for the worker to run on that engine."""
    def run(exports: dict, workdir: Path, settings: dict) -> Variant:
        peer = PEERS[name]
        spec = prepare_peer(name, exports["weights"] / "weights.npz", workdir / "peers", settings)
        return Variant(name, f"{peer.engine} ({peer.weights} weights)", spec, 0, [], None, None, peer.dtype,
                       peer=True, kv_dtype=peer.kv_dtype)
    return run


RUNNERS = {"paddlenlp-default": run_paddlenlp_default, "legacy": run_legacy, "legacy+pr9002": run_legacy_pr9002,
           "legacy+pass": run_legacy_pass, "pir": run_pir, "static-cache": run_static_cache, BF16: run_bf16,
           **{name: run_peer(name) for name in PEERS}}
# The export each variant runs (bench.models.EXPORTS).
EXPORT_OF = {"paddlenlp-default": "legacy", "legacy": "legacy", "legacy+pr9002": "legacy", "legacy+pass": "legacy",
             "pir": "pir", "static-cache": "static-cache", BF16: "bf16", **dict.fromkeys(PEERS, "weights")}
# The dtype of each variant's weights and computation, and of each export's weights.
DTYPE_OF = {**{name: dtype for dtype, names in DTYPE_VARIANTS.items() for name in names},
            **{name: peer.dtype for name, peer in PEERS.items()}}
EXPORT_DTYPE = {**{EXPORT_OF[name]: dtype for name, dtype in DTYPE_OF.items() if name not in PEERS},
                "weights": "float32"}
# PaddleNLP's own loop has its concat cache only; the peers run beside GenerationLoop's rows.
LOOP_VARIANTS = {"generation_loop": VARIANTS + (BF16,) + tuple(PEERS),
                 "paddlenlp": tuple(v for v in VARIANTS if v != "static-cache") + (BF16,)}


def exported_formats(variants) -> tuple:
    """The exports the variants need, in EXPORTS order."""
    needed = {EXPORT_OF[name] for name in variants}
    return tuple(fmt for fmt in EXPORTS if fmt in needed)


def _prepare(name: str, model_dir: Path, workdir: Path, settings: dict, rewrite, dtype: str = "float32") -> Variant:
    """Load the program, time ``rewrite`` on fresh translations, save it for its predictor."""
    from paddlenlp_ext.files import MODEL_PREFIX
    from paddlenlp_ext.inference import prepare_program
    from paddlenlp_ext.program_files import load_program, save_program

    from .pass_timing import time_rewrite

    if rewrite is None:
        loaded, pass_ms, report = load_program(model_dir), None, None
    else:  # the last timed run's program is the one run
        pass_ms, report, loaded = time_rewrite(model_dir, rewrite, settings["warmup"], settings["repeats"])
    # as StaticGenerationModel(batch_size=...) does before it runs a program on oneDNN
    prepare_program(loaded, "cpu", "all", settings["batch_size"])
    prefix = str(workdir / name / MODEL_PREFIX)
    save_program(loaded, prefix)
    copies = _copies(loaded.program)
    loaded.release()  # the benchmark holds no weights while the children run
    # StaticGenerationModel's own configuration: the same predictor a user of the package gets.
    return Variant(name, OUR_RUNTIME, ("ours", prefix), *copies, pass_ms, report, dtype)


def _copies(program) -> tuple[int, list]:
    """The loop copies of ``program``: (count, (shape, bytes per element) of each source)."""
    from paddlenlp_ext.passes.copy_ops import SOURCE, loop_copies
    from paddlenlp_ext.passes.program_index import ProgramIndex

    index = ProgramIndex.build(program)
    sources = [index.op(copy).operand_source(SOURCE) for copies in loop_copies(index).values() for copy in copies]
    return len(sources), [(list(value.shape), _itemsize(str(value.dtype).split(".")[-1])) for value in sources]


def _itemsize(dtype: str) -> int:
    return DTYPE_BYTES[dtype] if dtype in DTYPE_BYTES else np.dtype(dtype).itemsize  # numpy has no bfloat16


def bytes_per_token(variant: Variant, settings: dict, context: int) -> int:
    """The estimate described in benchmark.py's docstring."""
    batch = settings["batch_size"]
    cache_tail = [settings["kv_heads"], settings["hidden_size"] // settings["heads"]]
    average_length = context + settings["new_tokens"] / 2
    total = 0.0
    for shape, itemsize in variant.copy_sources:
        is_cache = len(shape) == 4 and shape[2:] == cache_tail
        dims = [batch if k == 0 and d == -1 else average_length if is_cache and k == 1 and d == -1
                else 1 if d == -1 else d for k, d in enumerate(shape)]
        total += math.prod(dims) * itemsize
    return round(total / batch)
