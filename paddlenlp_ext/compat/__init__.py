"""Patches that let PaddleNLP 2.8.1 models export and run on Paddle 3.x, and workarounds
of Paddle behaviour: all of them live in this package (``docs/compat.md``), one module
per job.

Each patch is applied only inside the context manager that needs it and restored on
exit (``patching``); nothing installed is edited.

- ``legacy_ops``: tracing into a legacy (ProgramDesc) program, the ops Paddle binds for
  PIR only (``legacy_export_patches``);
- ``pir_export``: tracing a llama into a PIR program (``pir_export_patches``), and the
  eager attention the other architectures share (``masked_attention``);
- ``paddlenlp_export``: PaddleNLP's own ``to_static`` (``paddlenlp_export_patches``);
- ``architectures``: QWen, Mixtral, Bloom and GPT (``export_patches``,
  ``dynamic_patches``);
- ``tracing``: dy2static's process-wide state kept from leaking between traces;
- ``runtime``: loading and running programs (scopes, the Executor's order, the
  executor's garbage-collector thread on CPU, legacy branches that write saved buffers);
- ``patching``: how a patch is set and undone.
"""

from .legacy_ops import is_legacy_variable, legacy_export_patches
from .paddlenlp_export import TopPSamplingUnavailable, paddlenlp_export_patches
from .pir_export import masked_attention, pir_export_patches
from .runtime import (batch_cpu_garbage_collection, empty_scope, executor_in_program_order,
                      read_persistables_written_in_branches)
from .tracing import fresh_trace_records

__all__ = ["TopPSamplingUnavailable", "batch_cpu_garbage_collection", "empty_scope", "executor_in_program_order",
           "fresh_trace_records", "is_legacy_variable", "legacy_export_patches", "masked_attention",
           "paddlenlp_export_patches", "pir_export_patches", "read_persistables_written_in_branches"]
