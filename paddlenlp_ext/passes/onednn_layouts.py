"""Which ops oneDNN (Paddle 3.3.1, CPU) may run with a blocked memory layout.

oneDNN creates convolutions with a memory format of its own choosing
(``format_tag::any``: blocked formats such as ``nChw8c``), and pooling and the
normalisations keep a blocked input's format. Every other oneDNN kernel here passes
its input's format on; the matmul family and the elementwise ops on plain inputs
produce plain formats. A blocked tensor read by a plain kernel goes through
``onednn_to_paddle_layout``, which then is a real copy (a reorder) rather than a view
of the same buffer, so an in-place write through it misses the value it means to
write. Two rules rest on this list: ``remove_loop_assign`` keeps the loop copies of
values derived from these ops, and ``inference`` guards the programs holding them
even where ``inplace_pass`` is deleted (the oneDNN differential test found such
programs wrong there, and none without these ops).
"""

from __future__ import annotations

BLOCKED_LAYOUT_OPS = frozenset(
    "pd_op." + name
    for name in (
        "conv2d", "depthwise_conv2d", "conv3d", "conv2d_transpose", "depthwise_conv2d_transpose",
        "conv3d_transpose", "pool2d", "pool3d", "max_pool2d_with_index", "batch_norm", "batch_norm_",
        "sync_batch_norm_", "lrn", "group_norm", "instance_norm", "fused_conv2d_add_act",
    )
)


def has_blocked_layout_ops(program) -> bool:
    """Whether ``program`` (a ``paddle.pir.Program``) holds any ``BLOCKED_LAYOUT_OPS``."""

    def search(block) -> bool:
        for op in block.ops:
            if op.name() in BLOCKED_LAYOUT_OPS:
                return True
            if op.num_regions() and any(search(inner) for inner in op.blocks()):
                return True
        return False

    return search(program.global_block())
