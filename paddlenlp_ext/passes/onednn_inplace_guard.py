"""onednn_inplace_guard: make a program safe from oneDNN's in-place alias and its blocked
loop layouts on Paddle 3.3.1's new IR.

The first hazard (Paddle 3.3.1, CPU, new IR, oneDNN on: what a user's
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
passes the alias on: a writer of *its* output counts too. ``h`` is not always a
float: oneDNN's ``cast`` writes whatever dtype it is asked for (int64 position or
bucket ids cast from an activation, bool, float64...), and ``pos + 1`` then runs in
place over ``pos``.

The second hazard (oneDNN on, with or without ``inplace_pass``): a while loop whose
init and yielded value differ in memory format, one a oneDNN blocked layout (a
convolution's output, ``passes/onednn_layouts.py``) and one plain, is wrong from its
second step on: the next step's convolution reads the blocked buffer as NCHW. A
loop written natively in PIR (to_static, ``while_loop``) has no loop copy
(``assign_out_``) to turn the yielded tensor back into a plain one.

Rule. This pass copies (a superset, decided on the program before Paddle's passes):

- every read that can be such a ``P``: a copy ``c`` of ``h`` is inserted in front of
  ``P`` and ``P`` reads ``c``, which nothing else reads (conditions 1-4);
- every loop init and yielded value that may hold a blocked layout: the loop carries
  the copy, a plain tensor in every iteration (condition 5);
- every value an if's branch yields that a oneDNN kernel may have written, copied in
  the branch (condition 6: the third hazard below).

The third hazard (oneDNN on; Paddle 3.3.1's kernel lowering, ``pd_op_to_kernel_pass``,
``HandleForIfOp``): a ``pd_op.if`` gets plain-typed results and no layout transform at
its branches' ``cf.yield``, so a plain kernel reading the if's result gets no
``onednn_to_paddle_layout`` in front of a tensor a oneDNN kernel wrote. A plain unary op
whose InferMeta shares its input's meta (``floor``, ``square``) then marks its output
oneDNN with no memory descriptor (the next reorder fails, or a oneDNN reader raises a
bare ``std::exception``), and a plain op reading a blocked tensor reads it raw (wrong
values, no error). A copy after the if is one of those plain readers; a copy inside the
branch, before the yield, is lowered with the transform (``tests/test_paddle_defects.py``
pins the defect and that).

The copy is ``pd_op.roll(h, 0, axes)`` (for bfloat16, float16, float8, int8, uint8
and int16, which roll's CPU kernel does not take: ``cast`` to float32 or int32, roll,
``cast`` back, exact both ways: ``exact_copy``). ``roll`` has no in-place version and no
oneDNN kernel, so its result is a fresh plain buffer whichever configuration runs it:
under oneDNN ``roll`` reads ``onednn_to_paddle_layout(h)`` (shared, or a reorder of a
blocked ``h``, but ``roll`` writes nothing in place). The casts around it change the
dtype, so inplace_pass never makes them in place. Why not other copies (each seen on
3.3.1):

- a copy with an in-place version (``scale(h, 1.0)``, ``assign``) is itself in-placed
  over ``h``, and the alias is back;
- ``concat([h])`` takes a vector: a value read before a loop by one concat and inside
  the loop by another only through ``builtin.combine`` is freed by Paddle Inference's
  executor before the loop reads it ("Tensor holds no memory", on plain kernels too),
  and with ``onednn_placement_pass`` deleted a concat gets no layout transform for a
  oneDNN input.

Paddle Inference runs ``common_subexpression_elimination_pass`` after its fuse and
placement passes (and before ``inplace_pass``). It merges an op into an earlier one of
its block or of an enclosing block (before the region op holding it) with the same
name, attributes and operands (in either order for commutative ops): a layer called
twice on one value gives one value read by both callers' readers, and a loop body
repeating a value from before the loop reads that value in every iteration.
Condition 4 counts reads as it will leave them (``_merged_values``: a superset,
decided on the ops as saved; two different op chains that a fuse pass would make into
one op are not foreseen), and copies of one merged value are built differently from
each other and from the rolls the program already holds (another list of axes), or it
would merge them into one ``c`` read by two guarded ops, the first of which writes over
it.
Rewriting ``pow(h, 2)`` as ``multiply(h, h)`` is no general fix: it changes bits
(Paddle's pow kernel is Eigen's ``pow``, not ``x * x``, for about 4% of float32
inputs), and a plain ``multiply`` is in-placed over a oneDNN output just the same.

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

and for a loop carrying ``relu(conv2d(y))`` (``%y`` the block argument)::

    (%4) = "pd_op.conv2d" (%y, %w) ...
    (%5) = "pd_op.relu" (%4)                           # may be blocked
    (%31) = "pd_op.roll" (%5, %30) {axis:[0]}          # plain
    () = "cf.yield" (%cond, %i1, %31)

Who runs it (``passes.pipeline``). Our own oneDNN configuration guards every program
it runs that holds ops oneDNN may give a blocked layout (it deletes ``inplace_pass``,
so condition 5 is what it needs), and every program that leaves our hands
(``convert``, the save hook) is guarded, as users run it on Paddle Inference's default
CPU config: placement, fuse passes and inplace_pass all on, deciding after us which
ops run on oneDNN and which are made in place. oneDNN off is not free of oneDNN
either: Paddle 3.3.1 runs the oneDNN kernel of a bfloat16 op that has no plain
bfloat16 kernel (``exp``, for one) with oneDNN disabled, and on the Executor, with
``inplace_pass`` and its alias; ``needs_guard_with_onednn_off`` says which programs
that concerns.

So its conditions are a superset decided on the program as saved, and assume nothing
about what Paddle's passes do to the kernels or the fusions (an adversarial review
found each narrower premise broken: a reader with a oneDNN kernel that stays plain,
``divide``; a value put on oneDNN by a fuse pass, ``hardsigmoid(x @ W + b)``; a value
read once, but in every iteration of a loop; an int64 value oneDNN's cast made; two
products merged into one). A read of ``h`` by op ``P`` at operand ``k`` is guarded when
all of these hold:

1. ``P`` may become a data-writing in-place op under inplace_pass: ``pd_op.P_`` exists
   and ``P`` is not ``transpose`` (inplace_pass's own exception); or ``P`` is an op
   whose in-place version writes no new data (``unsqueeze``, ``squeeze``, ``reshape``,
   ``flatten``, ``assign``: the result is the input's buffer) and its result is itself
   read by such a ``P`` (followed transitively). Whatever kernel ``P`` has: with its
   placement deleted, or for ops the placement leaves out (``divide``), an op with a
   oneDNN kernel runs a plain one. [_may_write]
2. Operand ``k`` has ``P``'s result 0 dtype (``CanDoInplace``: an in-place op keeps
   the dtype; compare and cast ops are never in-placed over another dtype), and is a
   tensor input, not an attribute given as a tensor (``scale``'s factor, ``clip``'s
   bounds). Any such operand counts, not only the one ``P_``'s inplace map names.
   [_may_write]
3. ``h`` may hold a tensor a oneDNN kernel wrote. It is not fed, a parameter or a
   constant (plain tensors Paddle's passes do not recompute), and one of: its dtype is
   one Paddle's oneDNN kernels are registered for (float32, bfloat16, float16, int8,
   uint8), where any op's result may be oneDNN's (placed there, or folded into a oneDNN
   op by a fuse pass); it is a ``cast`` or ``shape`` of such a dtype (the oneDNN kernels
   whose result has another dtype: any dtype for cast, int32 for shape); or it may
   share a buffer with such a value (a block argument with its init or yielded value,
   a loop's or if's result with what it carries or yields, a view, an in-place
   result). Other ops of other dtypes run plain kernels: the placement puts them on
   the oneDNN dialect by name, and the kernel selection falls back to the plain
   kernel for a dtype oneDNN has none for (seen: an int64 ``multiply``). A fuse pass
   does fold an int64, int32 or float64 product and scale into a oneDNN
   ``fused_elementwise_mul``, which then computes it wrong, guarded or not: a fusion
   defect of Paddle's (``docs/onednn.md``), not an alias. So an int64 loop counter
   (``full``, then ``i + 1``) is not guarded. [_onednn_values]
4. ``h``'s buffer is read after ``P``'s write can land, counting reads as
   ``common_subexpression_elimination_pass`` leaves them (``h`` and every value that
   pass may merge with it are one value), and counting the values an explicit in-place
   op makes one buffer with it (``h``'s in-place sources and in-place results, by the
   ops' inplace maps): another op reads one of them, or one is a program output, or
   ``P`` sits in a loop body that one of them is defined outside of (the next
   iteration reads it again), or one is a block argument or a result of a control-flow
   op (it may share the buffer of a loop's init or of a value yielded elsewhere).
   Seen: ``scale(set_value_with_tensor_(h0, ...))`` in a loop body, ``h0`` a bfloat16
   activation from before the loop, oneDNN off: the written result's only reader is
   the scale, but ``scale_`` writes ``h0``'s buffer, which the next iteration writes
   and reads again (the oneDNN differential's seed 437). (Another reader *before*
   ``P`` is counted as well; the copy is then unneeded but harmless.) [_read_again]

and an operand of a while op (an init) or of its body's yield (a value carried to the
next iteration and out of the loop) is copied when

5. it may hold a oneDNN blocked layout (``onednn_layouts.blocked_layout_values``:
   computed, through any ops but a copy, from a convolution, pooling or
   normalisation). Init and yielded value are then plain alike: copying one of them
   only is as wrong as copying neither (seen with a convolution before the loop).
   [_carried_blocked]

and an operand of an if branch's yield is copied, in the branch, when

6. it may hold a tensor a oneDNN kernel wrote (condition 3) and is not already such a
   copy (a ``roll``, which has no oneDNN kernel, or the casts around one). For the
   dtypes copied through a wider one, the last ``cast`` may itself run on oneDNN:
   those (bfloat16, float16, int8, uint8, int16 yields) are copied but not proven
   right; oneDNN off cannot run a bfloat16 if at all. [_branch_yields]

The shape condition of ``CanDoInplace`` is deliberately not used: shapes can be
refined by Paddle's passes, and a copy of a prefill-sized tensor costs far less than
a wrong token. A guarded read no longer meets condition 4 (``c`` has one reader and is
defined beside ``P``), a copy holds no blocked layout (condition 5), and a copied yield
is not copied again (condition 6), so running the pass twice changes nothing. On plain kernels the program computes the same bits
(a roll by 0 is an exact copy, and so are the casts around it).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import paddle

from ..paddle_modes import static_mode
from .exact_copy import defining_op, exact_copy, is_exact_copy
from .onednn_layouts import blocked_layout_values
from .program_index import FEED_OPS, IF, PERSISTABLE_PRODUCERS, WHILE, ProgramIndex, inplace_map, value_key, walk_ops
from .report import PassReport

# In-place versions that write no new data: their result is their input's buffer.
VIEW_OPS = frozenset({"pd_op.unsqueeze", "pd_op.squeeze", "pd_op.reshape", "pd_op.flatten", "pd_op.assign"})
CONTROL_FLOW = frozenset({WHILE, IF, "pd_op.select_input"})
NEVER_INPLACED = frozenset({"pd_op.transpose"})  # inplace_pass's own exception
# Operands that are attributes given as tensors (Scalars: scale's factor, clip's bounds):
# an in-place version writes a tensor input, never these.
ATTRIBUTE_OPERANDS = {"pd_op.scale": (1,), "pd_op.clip": (1, 2)}
# The dtypes Paddle 3.3.1's oneDNN kernels are registered for (its kernel registry:
# float32, bfloat16, int8, uint8, and float16 for interpolation and pad3d).
ONEDNN_KERNEL_DTYPES = (paddle.float32, paddle.bfloat16, paddle.float16, paddle.int8, paddle.uint8)
# oneDNN kernels whose result dtype is not their input's: cast (any dtype asked for)
# and shape (int32).
DTYPE_CHANGING_OPS = frozenset({"pd_op.cast", "pd_op.shape"})
# Plain tensors whatever the configuration: fed data, parameters, constants.
PLAIN_PRODUCERS = FEED_OPS | PERSISTABLE_PRODUCERS
# What common_subexpression_elimination_pass (Paddle 3.3.1) treats as commutative in
# operands 0 and 1.
COMMUTATIVE_OPS = frozenset(
    "pd_op." + name
    for name in ("multiply", "add", "maximum", "minimum", "logical_and", "logical_or", "logical_xor", "equal",
                 "not_equal", "bitwise_or", "bitwise_xor", "bitwise_and")
)
# The ops it never merges: each of their values is its own (its "terminate" ops).
UNMERGED_OPS = FEED_OPS | PERSISTABLE_PRODUCERS
# Attributes that are not an op's own (the pass compares only those): set by Paddle on
# any op, or extras the legacy translator keeps. Leaving one out of the comparison can
# only merge more.
RUNTIME_ATTRIBUTES = frozenset({"op_callstack", "stop_gradient", "persistable", "struct_name", "op_role", "chunk_id",
                                "op_namescope", "op_device", "with_quant_attr", "is_test", "use_mkldnn",
                                "mkldnn_data_type", "use_onednn", "onednn_data_type", "use_quantizer"})
@dataclass(frozen=True)
class OneDNNGuardReport(PassReport):
    guarded: int  # reads given a copy
    ops: dict = field(default_factory=dict)  # guarded reader op name -> count
    carried: int = 0  # loop inits and yielded values given a copy
    branch_yields: int = 0  # values an if's branches yield given a copy

    @property
    def modified(self) -> bool:
        return self.guarded > 0 or self.carried > 0 or self.branch_yields > 0

    def summary(self) -> str:
        named = ", ".join(f"{name} ({n})" for name, n in sorted(self.ops.items()))
        text = f"guarded {self.guarded} reads" + (f": {named}" if named else "")
        text += f"; copied {self.carried} loop-carried values" if self.carried else ""
        return text + (f"; copied {self.branch_yields} values if branches yield" if self.branch_yields else "")


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
    if _dtype(info.op.result(0)) != _dtype(source) or operand in ATTRIBUTE_OPERANDS.get(name, ()):  # condition 2
        return False
    if name in VIEW_OPS and hasattr(paddle._C_ops, _kernel(name) + "_") and operand == 0 and depth < 16:
        result = info.results[0]
        return any(_may_write(index, user, k, depth + 1) for user, k in index.uses.get(result, []))
    return _writes_in_place(name)  # condition 1


def _onednn_values(index: ProgramIndex) -> frozenset:
    """Condition 3: the keys of the values that may hold a tensor a oneDNN kernel wrote."""
    written, plain = set(), set()
    for key, value in index.values.items():
        dtype = _dtype(value)
        producer = defining_op(value)
        if dtype is None or (producer is not None and producer.name() in PLAIN_PRODUCERS):
            plain.add(key)
        elif dtype in ONEDNN_KERNEL_DTYPES:  # any op may be placed on oneDNN, or fused into a oneDNN op
            written.add(key)
        elif (producer is not None and producer.name() in DTYPE_CHANGING_OPS
              and _dtype(producer.operand_source(0)) in ONEDNN_KERNEL_DTYPES):
            written.add(key)
    # What may share a buffer with such a value: its block arguments, loop and if
    # results, views and in-place results (a fed value, a parameter or a constant keeps
    # its own plain tensor: a loop shares it into its block argument, not back).
    frontier = list(written)
    while frontier:
        for other, _ in index.aliases.edges.get(frontier.pop(), ()):
            if other not in written and other not in plain:
                written.add(other)
                frontier.append(other)
    return frozenset(written)


def _expression(info, merged: dict) -> tuple:
    """What common_subexpression_elimination_pass compares ops by: name, operands (as
    the values it leaves in their place; sorted for commutative ops) and the op's own
    attributes."""
    operands = [merged.get(key, key) for key in info.operands]
    if info.name in COMMUTATIVE_OPS and len(operands) >= 2:
        operands[:2] = sorted(operands[:2], key=str)
    # (Operation.get_attr_names, the op's own names, crashes Paddle on ops without yaml
    # info: if, while, select_input.)
    attrs = info.op.attrs()
    own = sorted((name, repr(value)) for name, value in attrs.items() if name not in RUNTIME_ATTRIBUTES)
    return info.name, tuple(operands), tuple(own)


def _merged_values(index: ProgramIndex) -> dict:
    """``{value key: key of the value common_subexpression_elimination_pass may leave in
    its place}`` for every value it may merge into another. A superset of what it does:
    it also refuses ops with side effects and values a yield, a while or an in-place op
    reads, which this ignores (counting more reads than there will be only adds
    copies)."""
    merged: dict = {}
    _merge_block(index, (None, 0), {}, merged)
    return merged


def _merge_block(index: ProgramIndex, block: tuple, visible: dict, merged: dict) -> None:
    # Module-level recursion, not a nested function (program_index._walk_block says why).
    table = dict(visible)  # a block sees its own and its enclosing blocks' earlier ops
    for op_id in index.block_ops[block]:
        info = index.ops[op_id]
        if info.name not in UNMERGED_OPS:
            expression = _expression(info, merged)
            earlier = table.setdefault(expression, op_id)
            if earlier != op_id:
                for mine, theirs in zip(info.results, index.ops[earlier].results):
                    merged[mine] = merged.get(theirs, theirs)
        for n in range(info.op.num_regions()):
            _merge_block(index, (op_id, n), table, merged)


def _inplace_buffer(index: ProgramIndex, members: list) -> set:
    """``members`` and every value an in-place op makes one buffer with them: the operand
    an in-place result was written into, the results written into them (transitively)."""
    shared, frontier = set(members), list(members)
    while frontier:
        key = frontier.pop()
        found = []
        producer = defining_op(index.values[key])
        if producer is not None:
            for out, inp in inplace_map(producer).items():
                if value_key(producer.result(out)) == key:
                    found.append(value_key(producer.operand_source(inp)))
        for user, k in index.uses.get(key, ()):
            info = index.ops[user]
            found += [info.results[out] for out, inp in inplace_map(info.op).items() if inp == k]
        for other in found:
            if other in index.values and other not in shared:
                shared.add(other)
                frontier.append(other)
    return shared


def _read_again(index: ProgramIndex, members: list, reader: int, outputs: set) -> bool:
    """Condition 4 for a value that is ``members`` once merged."""
    shared = _inplace_buffer(index, members)
    readers = {user for key in shared for user, _ in index.uses.get(key, [])}
    if len(readers) > 1 or any(key in outputs for key in shared):
        return True
    for key in shared:
        producer = defining_op(index.values[key])
        if producer is None or producer.name() in CONTROL_FLOW:
            return True
    inner = set(index.enclosing_loops(index.ops[reader].block))
    return any(inner - set(index.enclosing_loops(index.defined_in[key])) for key in shared)


def _guarded_reads(index: ProgramIndex, outputs: set, merged: dict) -> list[tuple[int, int]]:
    written = _onednn_values(index)
    members = defaultdict(list)  # value left in place -> every value merged into it, itself first
    for key in index.values:
        members[merged.get(key, key)].append(key)
    found = []
    for op_id in index.order:
        info = index.ops[op_id]
        if not info.name.startswith("pd_op."):
            continue
        for k, key in enumerate(info.operands):
            if key is None or key not in written:  # condition 3
                continue
            if _read_again(index, members[merged.get(key, key)], op_id, outputs) and _may_write(index, op_id, k):
                found.append((op_id, k))
    return found


def _carried_blocked(index: ProgramIndex) -> list[tuple[int, int]]:
    """Condition 5: ``(op id, operand)`` of every while init and body yield operand (the
    condition apart) that may hold a oneDNN blocked layout."""
    blocked = blocked_layout_values(index)
    found = []
    for op_id in index.order:
        if index.name(op_id) != WHILE:
            continue
        body_yield = index.yield_of((op_id, 0))
        for holder in (op_id, body_yield) if body_yield is not None else (op_id,):
            operands = index.ops[holder].operands
            found += [(holder, k) for k in range(1, len(operands)) if operands[k] in blocked]
    return found


def _branch_yields(index: ProgramIndex) -> list[tuple[int, int]]:
    """Condition 6: ``(yield op id, operand)`` of every value an if's branch yields that a
    oneDNN kernel may have written, and that is not already a copy."""
    written = _onednn_values(index)
    found = []
    for op_id in index.order:
        if index.name(op_id) != IF:
            continue
        for branch in range(index.ops[op_id].op.num_regions()):
            body_yield = index.yield_of((op_id, branch))
            if body_yield is None:
                continue
            operands = index.ops[body_yield].operands
            found += [(body_yield, k) for k, key in enumerate(operands)
                      if key is not None and key in written and not is_exact_copy(index.values[key])]
    return found


def _rolls_of(index: ProgramIndex, merged: dict) -> dict:
    """``{value: {axis lists}}``: the rolls the program holds (a run of this pass made
    them, or the user), keyed by the value each copies as ``exact_copy`` builds it (its
    operand, seen through the casts and reshapes around a roll) left in place by CSE."""
    taken = defaultdict(set)
    for info in index.ops.values():
        if info.name != "pd_op.roll":
            continue
        key = info.operands[0]
        producer = defining_op(index.values[key])
        while producer is not None and producer.name() in ("pd_op.cast", "pd_op.reshape"):
            key = value_key(producer.operand_source(0))
            producer = defining_op(index.values[key])
        taken[merged.get(key, key)].add(tuple(info.op.attrs()["axis"]))
    return taken


def needs_guard_with_onednn_off(program) -> bool:
    """Whether ``program`` needs this guard on a configuration with oneDNN disabled and
    ``inplace_pass`` on (our ``onednn="off"``): when it holds a bfloat16 value. Paddle
    3.3.1 then still runs oneDNN kernels, for the bfloat16 ops that have no plain kernel
    of that dtype, and a plain reader made in place writes over their results (the first
    hazard above)."""
    return any(_dtype(result) == paddle.bfloat16 for op in walk_ops(program) for result in op.results())


def guard_onednn_inplace(program, outputs=None, *, reads: bool = True) -> OneDNNGuardReport:
    """Insert a copy before every read, of every loop init and yielded value, and of every
    value an if's branch yields, that the rule above selects; ``outputs`` are the values
    the program's users fetch (condition 4; None: none). ``reads=False``: conditions 5 and 6 only (a
    configuration without ``inplace_pass``, where the reads need no copy). Returns what
    was copied."""
    index = ProgramIndex.build(program)
    merged = _merged_values(index)
    reads = _guarded_reads(index, {value_key(v) for v in outputs or ()}, merged) if reads else []
    carried = _carried_blocked(index)
    branch_yields = _branch_yields(index)
    taken = _rolls_of(index, merged)
    names = Counter()
    guarded = set(reads)
    with static_mode(), paddle.pir_utils.IrGuard(), paddle.static.program_guard(program):
        for op_id, k in reads + carried + branch_yields:
            op = index.ops[op_id].op
            source = op.operand_source(k)
            paddle.pir.set_insertion_point(op)
            op.operand(k).set_source(exact_copy(source, taken[merged.get(value_key(source), value_key(source))]))
            if (op_id, k) in guarded:
                names[op.name()] += 1
        paddle.pir.reset_insertion_point_to_end()
    return OneDNNGuardReport(len(reads), dict(names), len(carried), len(branch_yields))
