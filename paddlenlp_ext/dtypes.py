"""The dtype a model is loaded and computed in: PaddleNLP's ``--dtype``, on our devices.

PaddleNLP's predictor and export pass ``--dtype`` to ``from_pretrained(dtype=...)``,
which casts a checkpoint's weights as they load: a float16 checkpoint (real llama2
checkpoints ship ``"dtype": "float16"``) loaded with ``dtype="float32"`` computes in
float32. Left unset, ``from_pretrained`` keeps the checkpoint's dtype.

On Paddle 3.3.1's CPU wheel (measured here):

- float16 cannot compute: PIR and dygraph have no float16 ``matmul`` or ``multiply``
  CPU kernel (and this CPU has no AVX512-FP16). ``--dtype float16`` on CPU is an
  error; an unset ``--dtype`` loads any checkpoint in float32 there, the one dtype
  both modes compute in.
- bfloat16 has no dygraph CPU ``matmul`` either; a static bfloat16 program computes on
  oneDNN's bfloat16 kernels (``export.py`` says which exports a bfloat16 model takes),
  which need AVX-512 (``cpu.computes_bfloat16``): on a CPU without it, bfloat16 is an
  error too, before anything is loaded.

On a GPU the unset ``--dtype`` keeps the checkpoint's, as PaddleNLP does. Nothing here
imports Paddle.
"""

from __future__ import annotations

from . import cpu

DTYPES = ("float32", "float16", "bfloat16")
CPU_DTYPES = ("float32", "bfloat16")  # bfloat16 in static mode only


class DtypeError(ValueError):
    """A dtype the device cannot compute in: one line for the user."""


def load_dtype(requested: str | None, device: str, *, static: bool) -> str | None:
    """The ``dtype`` to give ``from_pretrained`` for ``--dtype requested`` on
    ``device``, for a static export or dygraph (None: the checkpoint's own);
    DtypeError when it cannot run there."""
    if requested is not None and requested not in DTYPES:
        raise DtypeError(f"--dtype must be one of {', '.join(DTYPES)}, got {requested!r}")
    if device != "cpu":
        return requested
    if requested is None:
        return "float32"
    if requested not in CPU_DTYPES:
        raise DtypeError(f"--dtype {requested}: Paddle's CPU kernels cannot compute a model in {requested} "
                         f"(no {requested} matmul on CPU); use --dtype float32, which loads a {requested} "
                         "checkpoint cast to float32")
    if requested == "bfloat16" and not static:
        raise DtypeError("--dtype bfloat16: Paddle's dygraph has no bfloat16 matmul on CPU; use --mode static "
                         "(a static program computes in bfloat16 on oneDNN)")
    if requested == "bfloat16" and not cpu.computes_bfloat16():
        raise DtypeError(f"--dtype bfloat16: {cpu.NO_BFLOAT16}; use --dtype float32, which loads a bfloat16 "
                         "checkpoint cast to float32")
    return requested


def check_exported_dtype(exported: str | None, requested: str | None, device: str, directory: str) -> None:
    """DtypeError when a static model exported in ``exported`` (its ``config.json``'s;
    None: float32, PaddleNLP's default, which it leaves out) cannot compute on
    ``device``, or is not the ``--dtype`` asked for: an export's weights are fixed."""
    exported = exported or "float32"
    if device == "cpu" and exported == "float16":
        raise DtypeError(f"{directory}: the model was exported in float16, which Paddle's CPU kernels cannot "
                         "compute; export it again from its checkpoint with --dtype float32")
    if device == "cpu" and exported == "bfloat16" and not cpu.computes_bfloat16():
        raise DtypeError(f"{directory}: the model was exported in bfloat16 and {cpu.NO_BFLOAT16}; export it "
                         "again from its checkpoint with --dtype float32")
    if requested is not None and requested != exported:
        raise DtypeError(f"--dtype {requested}: {directory} was exported in {exported}, which --dtype cannot "
                         "change; export it again from its checkpoint with that --dtype")
