"""Ops a saved program names that this Paddle does not have: a directory from a newer Paddle.

Paddle 3.3.1 reads such a directory without an error:

- in a PIR ``model.json``, an op it does not know becomes an op with an empty name,
  which crashes the process (SIGSEGV) when code asks what that op is, and which Paddle
  Inference refuses only when it builds the predictor, with ``op [] kernel output args
  (0) defs should equal op outputs (1)``;
- in a legacy ``.pdmodel``, the translator to PIR stops at the op with ``Op X should
  have corresponding OpInfo pd_op.X``, which looks like a translation defect and would
  send us to the fallback, where Paddle Inference fails again.

So the loader checks for unknown ops first and names them. Newer format versions and
unknown types or attributes need no check: Paddle reads the first and raises a clear
ValueError for the others.
"""

from __future__ import annotations

import json

import paddle


def unknown_legacy_ops(desc) -> list[str]:
    """The op types in a ProgramDesc that neither PIR nor Paddle's older op registry has.

    ``check_unregistered_ops`` lists the ops without a PIR counterpart, which includes
    those the translator rewrites itself (``while``, ``conditional_block``); those are
    in the older registry, so only an op missing from both is unknown to this Paddle.
    """
    registered = set(paddle.base.core.get_all_op_names())
    unregistered = paddle.base.libpaddle.pir.check_unregistered_ops(desc)
    return sorted({name for name in unregistered if name not in registered})


def unknown_pir_ops(program, json_path: str) -> list[str]:
    """The names (as ``model.json`` spells them) of the ops ``program``, loaded from
    ``json_path``, holds without a name; [] when it has none.

    The loaded program and the file list the same ops in the same order (each op,
    then the ops of its regions); should they not, the unknown ops are only counted.
    """
    loaded = list(_pir_op_names(program.global_block()))
    if "" not in loaded:
        return []
    with open(json_path) as file:
        saved = list(_json_op_names(json.load(file)["program"]))
    if len(saved) != len(loaded):
        return [f"{loaded.count('')} ops"]
    # "1.relu": a dialect number, then the op's name.
    return sorted({name.split(".", 1)[-1] for name, seen in zip(saved, loaded) if seen == ""})


def unknown_pir_file_ops(json_path: str) -> list[str]:
    """``unknown_pir_ops`` for a ``model.json`` alone (its parameters are not read); []
    for a file Paddle cannot read at all, which Paddle's own loader then reports."""
    with paddle.pir_utils.IrGuard():
        program = paddle.static.Program()
        try:
            paddle.base.core.deserialize_pir_program(json_path, program)
        except Exception:  # noqa: BLE001 (Paddle raises what its C++ code throws)
            return []
    return unknown_pir_ops(program, json_path)


def _pir_op_names(block):
    for op in block.ops:
        name = op.name()
        yield name
        if name and op.num_regions():
            for inner in op.blocks():
                yield from _pir_op_names(inner)


def _json_op_names(node):
    """Every op's ``#`` in a serialized PIR program, in order. Ops are the objects with
    a name and inputs or outputs (regions, blocks, types and attributes have neither)."""
    if isinstance(node, dict):
        if "#" in node and ("I" in node or "O" in node):
            yield node["#"]
        for value in node.values():
            yield from _json_op_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _json_op_names(value)


def unknown_ops_message(path, names: list[str]) -> str:
    return (f"{path}: the program uses ops Paddle {paddle.__version__} does not have ({', '.join(names)}); "
            "was it saved by a newer Paddle? Export it again with this Paddle, or install the newer one")
