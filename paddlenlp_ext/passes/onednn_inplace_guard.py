"""onednn_inplace_guard: make a program safe from oneDNN's in-place alias on Paddle 3.3.1's new IR.

The hazard (Paddle 3.3.1, CPU, new IR, oneDNN on: what a user's
``Config(model.json, model.pdiparams)`` with ``disable_gpu()`` runs by default).
Three steps of Paddle's own pipeline combine:

- ``pd_op_to_kernel_pass.cc`` (``BuildInputs`` -> ``AddOneDNN2PaddleLayoutTransferOp``):
  when an op that runs a plain CPU kernel reads a value ``h`` whose kernel was oneDNN
  (layout ONEDNN), it inserts ``v = pd_op.onednn_to_paddle_layout(h)`` and the op reads ``v``.
  One such op per reader, so the reader is always ``v``'s only (last) user.
- ``phi/kernels/onednn_to_paddle_layout_kernel.cc`` (``OneDNN2PaddleLayout``, and
  ``funcs::TransDataLayoutFromOneDNN`` in ``data_layout_transform.cc``): when ``h`` is
  already in a plain memory format (always for the elementwise and matmul outputs
  here), ``v`` *shares h's buffer* (``ShareDataWith``), no copy.
- ``transforms/general/inplace_pass.cc`` (``GetInplaceOps`` / ``CanDoInplace``): it
  rewrites a reader ``P`` of ``v`` into its in-place version ``P_`` (out written into
  ``v``'s buffer) when ``P_`` is a registered op, ``P`` is not ``pd_op.transpose`` nor in
  ``FLAGS_ir_inplace_kernel_blacklist``, ``v`` is eager-deletable at ``P`` (``P`` is its
  last user: always, see above), ``v`` is not a block argument, ``v`` and the output have
  the same dtype, and their static shapes have ``-1`` only in dimension 0 (never in a
  rank-1 shape) with equal element counts (reshape/squeeze/unsqueeze skip the shape
  check). It tracks aliasing only through ops marked ``is_inplace``, so it does not
  know that ``v`` *is* ``h``.

So ``P_`` overwrites ``h``; the program is wrong whenever ``h`` is read after ``P``
(by a oneDNN op, a yield, a fetch, anything). In a llama decoding loop that is
RMSNorm's ``pow(h, 2)``: ``h`` (a oneDNN cast or fused matmul, shape ``[-1, 1, hidden]``
in the decode step) is read again by ``rsqrt(...) * h``; the prefill's
``[-1, -1, hidden]`` fails the shape check, hence "first token right, then wrong".
A plain op whose in-place version only re-labels its input (unsqueeze, assign)
passes the alias on: a writer of *its* output counts too.

Rule. This pass guards every read that can be such a ``P`` (a superset, decided on
the program before Paddle's passes): it inserts a copy ``c = pd_op.roll(h, 0, axis)``
in front of ``P`` and makes ``P`` read ``c``. ``roll`` has no in-place version and no
oneDNN kernel, so ``c`` is a fresh plain buffer whichever configuration runs it: under
oneDNN ``roll`` reads ``onednn_to_paddle_layout(h)`` (shared, but ``roll`` writes
nothing in place) and ``P`` reads ``c``, which nothing else reads. Why not other copies
(each seen on 3.3.1):

- a copy with an in-place version (``scale(h, 1.0)``, ``assign``) is itself in-placed
  over ``h``, and the alias is back;
- ``concat([h])`` takes a vector: a value read before a loop by one concat and inside
  the loop by another only through ``builtin.combine`` is freed by Paddle Inference's
  executor before the loop reads it ("Tensor holds no memory", on plain kernels too),
  and with ``onednn_placement_pass`` deleted a concat gets no layout transform for a
  oneDNN input.

Two copies of one value are built differently (another axis, or nested rolls):
``common_subexpression_elimination_pass`` would otherwise merge them into one ``c``
read by two guarded ops, the first of which writes over it. Rewriting ``pow(h, 2)`` as
``multiply(h, h)`` is no general fix: it changes bits (Paddle's pow kernel is Eigen's
``pow``, not ``x * x``, for about 4% of float32 inputs), and a plain ``multiply`` is
in-placed over a oneDNN output just the same.

Before::

    (%7) = "pd_op.cast" (%6) {dtype:float32}          # oneDNN kernel: h
    (%8) = "pd_op.pow" (%7) {y:2}                      # plain kernel -> pow_ over h
    (%9) = "pd_op.mean" (%8) ...
    ...
    (%12) = "pd_op.multiply" (%11, %7)                 # reads h ** 2 instead of h

After::

    (%7) = "pd_op.cast" (%6) {dtype:float32}
    (%20) = "pd_op.full_int_array" () {dtype:int64, value:[0]}
    (%21) = "pd_op.roll" (%7, %20) {axis:[0]}           # c
    (%8) = "pd_op.pow" (%21) {y:2}                     # pow_ may overwrite c: nothing else reads it
    ...
    (%12) = "pd_op.multiply" (%11, %7)                 # reads h

Who runs it. ``paddlenlp_ext.inference`` guards every program it runs with oneDNN
(and also deletes ``inplace_pass`` from those configurations), and every program that
leaves our hands (``convert``, the save hook), which users run on Paddle Inference's
default CPU config: placement, fuse passes and inplace_pass all on, deciding after us
which ops run on oneDNN and which are made in place.

So its conditions are a superset decided on the program as saved, and assume nothing
about what Paddle's passes do to the kernels or the fusions (an adversarial review
found each narrower premise broken: a reader with a oneDNN kernel that stays plain,
``divide``; a value put on oneDNN by a fuse pass, ``hardsigmoid(x @ W + b)``; a value
read once, but in every iteration of a loop). A read of ``h`` by op ``P`` at operand
``k`` is guarded when all of these hold:

1. ``P`` may become a data-writing in-place op under inplace_pass: ``pd_op.P_`` exists
   and ``P`` is not ``transpose`` (inplace_pass's own exception); or ``P`` is an op
   whose in-place version writes no new data (``unsqueeze``, ``squeeze``, ``reshape``,
   ``flatten``, ``assign``: the result is the input's buffer) and its result is itself
   read by such a ``P`` (followed transitively). Whatever kernel ``P`` has: with its
   placement deleted, or for ops the placement leaves out (``divide``), an op with a
   oneDNN kernel runs a plain one. [_may_write]
2. Operand ``k`` has ``P``'s result 0 dtype (``CanDoInplace``: an in-place op keeps
   the dtype; compare and cast ops are never in-placed over a float input). [_may_write]
3. ``h`` may hold a oneDNN-layout tensor: its dtype is one Paddle's oneDNN kernels
   produce (float32, bfloat16, int8, uint8; not int64 or bool, which also keeps the
   guard off loop counters), and it is not fed, a parameter or a constant (those are
   plain tensors Paddle's passes do not recompute). Any op's result
   may be oneDNN's: a fuse pass can fold its producer into a oneDNN op. [_may_be_onednn]
4. ``h`` is read after ``P``'s write can land: another op reads it too, or it is a
   program output, or ``P`` sits in a loop body that ``h`` is defined outside of (the
   next iteration's ``P`` reads it again), or ``h`` is a block argument or a result of
   a control-flow op (it may share the buffer of a loop's init or of a value yielded
   elsewhere). (Another reader *before* ``P`` is counted as well; the copy is then
   unneeded but harmless.) [_read_again]

The shape condition of ``CanDoInplace`` is deliberately not used: shapes can be
refined by Paddle's passes, and a copy of a prefill-sized tensor costs far less than
a wrong token. A guarded read no longer meets condition 4 (``c`` has one reader and is
defined beside ``P``), so running the pass twice changes nothing. On plain kernels the
program computes the same bits (a roll by 0 is an exact copy).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import paddle

from ..paddle_modes import static_mode
from .program_index import FEED_OPS, PERSISTABLE_PRODUCERS, ProgramIndex, value_key

# In-place versions that write no new data: their result is their input's buffer.
VIEW_OPS = frozenset({"pd_op.unsqueeze", "pd_op.squeeze", "pd_op.reshape", "pd_op.flatten", "pd_op.assign"})
CONTROL_FLOW = frozenset({"pd_op.while", "pd_op.if", "pd_op.select_input"})
NEVER_INPLACED = frozenset({"pd_op.transpose"})  # inplace_pass's own exception
# The dtypes Paddle's oneDNN kernels produce.
ONEDNN_DTYPES = (paddle.float32, paddle.bfloat16, paddle.int8, paddle.uint8)
# Plain tensors whatever the configuration: fed data, parameters, constants.
PLAIN_PRODUCERS = FEED_OPS | PERSISTABLE_PRODUCERS


@dataclass(frozen=True)
class OneDNNGuardReport:
    guarded: int  # reads given a copy
    ops: dict = field(default_factory=dict)  # guarded reader op name -> count

    @property
    def modified(self) -> bool:
        return self.guarded > 0

    def summary(self) -> str:
        named = ", ".join(f"{name} ({n})" for name, n in sorted(self.ops.items()))
        return f"guarded {self.guarded} reads" + (f": {named}" if named else "")


def _kernel(op_name: str) -> str:
    return op_name.split(".", 1)[1] if "." in op_name else op_name


def _writes_in_place(op_name: str) -> bool:
    """``op_name`` may become a data-writing in-place op under inplace_pass."""
    if not op_name.startswith("pd_op.") or op_name in NEVER_INPLACED or op_name in VIEW_OPS:
        return False
    return hasattr(paddle._C_ops, _kernel(op_name) + "_")


def _dtype(value):
    try:
        return value.dtype
    except Exception:  # vectors, null values
        return None


def _may_write(index: ProgramIndex, op_id: int, operand: int, depth: int = 0) -> bool:
    """Conditions 1 and 2 for ``op_id`` reading its ``operand``-th operand (views followed)."""
    info = index.ops[op_id]
    name = info.name
    if info.op.num_results() == 0:
        return False
    source = index.values[info.operands[operand]]
    if _dtype(info.op.result(0)) != _dtype(source):
        return False
    if name in VIEW_OPS and hasattr(paddle._C_ops, _kernel(name) + "_") and operand == 0 and depth < 16:
        result = info.results[0]
        return any(_may_write(index, user, k, depth + 1) for user, k in index.uses.get(result, []))
    return _writes_in_place(name)


def _may_be_onednn(index: ProgramIndex, key: str) -> bool:
    """Condition 3."""
    value = index.values[key]
    if _dtype(value) not in ONEDNN_DTYPES:
        return False
    producer = _producer(value)
    return producer is None or producer.name() not in PLAIN_PRODUCERS


def _producer(value):
    try:
        return value.get_defining_op()
    except Exception:  # a block argument
        return None


def _read_again(index: ProgramIndex, key: str, reader: int, outputs: set) -> bool:
    """Condition 4."""
    if key in outputs or len({user for user, _ in index.uses.get(key, [])}) > 1:
        return True
    producer = _producer(index.values[key])
    if producer is None or producer.name() in CONTROL_FLOW:
        return True
    inner = set(index.enclosing_loops(index.ops[reader].block))
    return bool(inner - set(index.enclosing_loops(index.defined_in[key])))


def _guarded_reads(index: ProgramIndex, outputs: set) -> list[tuple[int, int]]:
    found = []
    for op_id in index.order:
        info = index.ops[op_id]
        if not info.name.startswith("pd_op."):
            continue
        for k, key in enumerate(info.operands):
            if key is None or not _may_be_onednn(index, key):
                continue
            if _read_again(index, key, op_id, outputs) and _may_write(index, op_id, k):
                found.append((op_id, k))
    return found


def _copy(value, n: int):
    """A fresh tensor equal to ``value``: ``roll(value, 0, axis)``, the ``n``-th copy of
    ``value`` built differently from the others (axes, then nested rolls: ``n`` written
    in bijective base 2 * rank), so that common_subexpression_elimination_pass cannot
    merge two copies into one value read by two ops (which brings the hazard back). A
    0-D value is copied as a [1] view of it, then viewed back."""
    rank = len(value.shape)
    if rank == 0:
        return paddle._C_ops.reshape(_copy(paddle._C_ops.reshape(value, [1]), n), [])
    axes = list(range(rank)) + list(range(-rank, 0))
    copy = value
    while True:
        copy = paddle._C_ops.roll(copy, [0], [axes[n % len(axes)]])
        n //= len(axes)
        if n == 0:
            return copy
        n -= 1


def guard_onednn_inplace(program, outputs=()) -> OneDNNGuardReport:
    """Insert a copy before every read the rule above selects; ``outputs`` are the values
    the program's users fetch (condition 5). Returns what was guarded."""
    index = ProgramIndex.build(program)
    reads = _guarded_reads(index, {value_key(v) for v in outputs})
    names = Counter()
    copies_of = Counter()  # source value -> copies made of it so far
    with static_mode(), paddle.pir_utils.IrGuard(), paddle.static.program_guard(program):
        for op_id, k in reads:
            op = index.ops[op_id].op
            source = op.operand_source(k)
            paddle.pir.set_insertion_point(op)
            op.operand(k).set_source(_copy(source, copies_of[value_key(source)]))
            copies_of[value_key(source)] += 1
            names[op.name()] += 1
        paddle.pir.reset_insertion_point_to_end()
    return OneDNNGuardReport(len(reads), dict(names))
