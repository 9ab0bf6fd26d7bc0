"""Which ops oneDNN (Paddle 3.3.1, CPU) may run with a blocked memory layout, and which
values may hold one.

oneDNN creates convolutions with a memory format of its own choosing
(``format_tag::any``: blocked formats such as ``nChw8c``), and pooling and the
normalisations keep a blocked input's format. Every other oneDNN kernel here passes
its input's format on; the matmul family and the elementwise ops on plain inputs
produce plain formats. A blocked tensor read by a plain kernel goes through
``onednn_to_paddle_layout``, which then is a real copy (a reorder) rather than a view
of the same buffer, so an in-place write through it misses the value it means to
write. A while loop whose init and yielded value differ in format (one blocked, one
plain) is wrong from its second step on (the next step's convolution reads the
blocked buffer as NCHW; seen with and without ``inplace_pass``). Three rules rest on
this: ``remove_loop_assign`` keeps the loop copies of values derived from these ops,
``onednn_inplace_guard`` copies every loop init and yielded value that may hold a
blocked layout (``blocked_layout_values``), and our own oneDNN configuration
(``pipeline``) guards the programs holding these ops although it deletes
``inplace_pass``.
"""

from __future__ import annotations

from .program_index import IF, WHILE, walk_ops

BLOCKED_LAYOUT_OPS = frozenset(
    "pd_op." + name
    for name in (
        "conv2d", "depthwise_conv2d", "conv3d", "conv2d_transpose", "depthwise_conv2d_transpose",
        "conv3d_transpose", "pool2d", "pool3d", "max_pool2d_with_index", "batch_norm", "batch_norm_",
        "sync_batch_norm_", "lrn", "group_norm", "instance_norm", "fused_conv2d_add_act",
    )
)
# Ops with no oneDNN kernel (and in no oneDNN fuse pattern): a plain kernel writes a
# plain tensor, whatever format its input had (``onednn_to_paddle_layout`` reorders it
# first). The guard's copies are these.
PLAIN_LAYOUT_OPS = frozenset({"pd_op.roll"})


def has_blocked_layout_ops(program) -> bool:
    """Whether ``program`` (a ``paddle.pir.Program``) holds any ``BLOCKED_LAYOUT_OPS``."""
    return any(op.name() in BLOCKED_LAYOUT_OPS for op in walk_ops(program))


def blocked_layout_values(index) -> frozenset:
    """Keys of the values of ``index`` (a ``ProgramIndex``) that may hold a oneDNN blocked
    layout: results of ``BLOCKED_LAYOUT_OPS`` and, through any chain of ops but
    ``PLAIN_LAYOUT_OPS``, of every op reading such a value (a superset: most oneDNN
    kernels pass a blocked input's format on, and which ops run on oneDNN is decided
    later). A while passes its init and what its body yields at one position on to that
    position's block argument and result; an if what its branches yield at one
    position on to that result; another region op anything it touches to everything."""
    found: set[str] = set()
    changed = any(info.name in BLOCKED_LAYOUT_OPS for info in index.ops.values())  # most programs: none
    while changed:  # a loop's yield reaches its own block arguments: to a fixpoint
        changed = False
        for op_id in index.order:
            info = index.ops[op_id]
            if info.name in PLAIN_LAYOUT_OPS:
                continue
            for reads, targets in _flows(index, op_id, info):
                if info.name in BLOCKED_LAYOUT_OPS or any(key in found for key in reads if key):
                    new = set(targets) - found
                    if new:
                        found |= new
                        changed = True
    return frozenset(found)


def _flows(index, op_id: int, info) -> list:
    """``[(values read, values they reach)]`` for one op of ``index``."""
    regions = [(op_id, n) for n in range(info.op.num_regions())]
    if not regions:
        return [(info.operands, info.results)]
    yields = [index.ops[y].operands if y is not None else [] for y in map(index.yield_of, regions)]
    if info.name == WHILE:  # operand 0 and yield 0 are the condition
        args = index.block_args[regions[0]]
        return [([info.operands[k + 1], yields[0][k + 1] if k + 1 < len(yields[0]) else None], [args[k], result])
                for k, result in enumerate(info.results)]
    if info.name == IF:
        return [([y[k] for y in yields if k < len(y)], [result]) for k, result in enumerate(info.results)]
    touched = [key for key in info.operands if key] + [key for y in yields for key in y if key]
    return [(touched, list(info.results) + [arg for region in regions for arg in index.block_args[region]])]
