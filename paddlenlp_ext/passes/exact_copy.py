"""An exact copy of a PIR value that no oneDNN kernel, fuse pass or CSE can undo: what
the passes that keep Paddle Inference's rewrites away from a value insert
(``onednn_inplace_guard``, ``onednn_broadcast_add``).

The copy is ``pd_op.roll(value, 0, axes)``: roll has no in-place version, no oneDNN
kernel and is in no fuse pattern, and a roll by 0 is exact. Each copy of a value gets an
axis list no other roll of it has, so that common_subexpression_elimination_pass cannot
merge two copies into one value read by two ops.
"""

from __future__ import annotations

import paddle

# The dtypes roll's CPU kernel takes as they are; every other dtype a PIR value can
# have goes through a wider one that holds each of its values exactly.
ROLLED_DTYPES = (paddle.bool, paddle.int32, paddle.int64, paddle.float32, paddle.float64, paddle.complex64,
                 paddle.complex128)
WIDER_DTYPE = {paddle.bfloat16: paddle.float32, paddle.float16: paddle.float32, paddle.float8_e4m3fn: paddle.float32,
               paddle.float8_e5m2: paddle.float32, paddle.int8: paddle.int32, paddle.uint8: paddle.int32,
               paddle.int16: paddle.int32}


def defining_op(value):
    """The op that defines ``value``, or None for a block argument."""
    try:
        return value.get_defining_op()
    except Exception:  # a block argument
        return None


def is_exact_copy(value) -> bool:
    """Whether ``value`` is a copy as ``exact_copy`` builds it: a roll's result, or a cast
    of one (the dtypes copied through a wider one), seen through reshapes (0-D values)."""
    producer = defining_op(value)
    while producer is not None and producer.name() in ("pd_op.cast", "pd_op.reshape"):
        producer = defining_op(producer.operand_source(0))
    return producer is not None and producer.name() == "pd_op.roll"


def exact_copy(value, taken: set):
    """A fresh tensor equal to ``value``: ``roll(value, 0, axes)``, built differently
    from every roll of ``value`` already made (``taken``, its axis lists: updated), so
    that common_subexpression_elimination_pass cannot merge two copies, nor a copy with
    part of another, into one value read by two ops.
    One roll op whose axis list is the first ``n`` (written in bijective base 2 * rank)
    not taken. A 0-D value is copied as a [1] view of it, then viewed back; a dtype
    roll does not take, in a wider one (``WIDER_DTYPE``: exact both ways). Built at
    the current insertion point of the current program."""
    rank = len(value.shape)
    if rank == 0:
        return paddle._C_ops.reshape(exact_copy(paddle._C_ops.reshape(value, [1]), taken), [])
    wider = WIDER_DTYPE.get(value.dtype)
    if wider is not None:
        return paddle._C_ops.cast(exact_copy(paddle._C_ops.cast(value, wider), taken), value.dtype)
    if value.dtype not in ROLLED_DTYPES:  # none in Paddle 3.3.1: a later dtype must be added above
        raise TypeError(f"exact_copy: no exact copy for a {value.dtype} value")
    symbols = list(range(rank)) + list(range(-rank, 0))
    n = 0
    while True:
        axes, m = [], n
        while True:
            axes.append(symbols[m % len(symbols)])
            m //= len(symbols)
            if m == 0:
                break
            m -= 1
        if tuple(axes) not in taken:
            taken.add(tuple(axes))
            return paddle._C_ops.roll(value, [0] * len(axes), axes)
        n += 1
