"""List the reads Paddle Inference's inplace_pass can turn into writes over a oneDNN value.

Creates a predictor for MODEL_PREFIX.json/.pdiparams (new IR, CPU, oneDNN on; with
``--no-placement`` also ``delete_pass("onednn_placement_pass")``) with ``FLAGS_print_ir``
set, in a child process, and reads the kernel program it prints after lowering
("IR after lowering", before the executor's inplace_pass). For every
``onednn_to_paddle_layout`` (whose output shares its oneDNN input's buffer) it follows
the reader ``P`` of its output (through plain reshape-like ops, whose in-place
versions only re-label the buffer) and prints one line per kind of read, marked
``HAZARD`` when ``inplace_pass`` (Paddle 3.3.1, ``CanDoInplace``) would make ``P``
write over that buffer while the oneDNN value is still read later in program order:

- ``P`` has a registered in-place version (``paddle._C_ops.P_``) and is not transpose;
- the read is ``P``'s operand 0 (the slot the in-place versions write), same dtype as
  its output;
- the static shapes of the operand and the output have -1 only in dimension 0, and
  are not rank 1 with -1;
- the oneDNN value is read again after ``P`` (any op, a yield included).

    python scripts/investigations/onednn_hazard_scan.py MODEL_PREFIX [--no-placement]

The text format of the printed program is Paddle's, not an API: this is a diagnostic
for a Paddle upgrade, checked by hand against ``paddlenlp_ext.passes.onednn_inplace_guard``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

CHILD = """
import sys, paddle
from paddle import inference
config = inference.Config(sys.argv[1] + ".json", sys.argv[1] + ".pdiparams")
config.disable_gpu()
config.enable_new_ir(True)
config.enable_mkldnn()
if sys.argv[2] == "1":
    config.delete_pass("onednn_placement_pass")
paddle.set_flags({"FLAGS_print_ir": True})
inference.create_predictor(config)
"""
LINE = re.compile(r'^(\s*)\(([^)]*)\) = "([^"]+)"(?: \[id:\d+\])? \(([^)]*)\) \{(.*)\} : \((.*)\) -> (.*)$')
VIEWS = {"pd_op.unsqueeze", "pd_op.squeeze", "pd_op.reshape", "pd_op.flatten", "pd_op.assign"}


def lowered_program(prefix: str, no_placement: bool) -> list[str]:
    out = subprocess.run([sys.executable, "-c", CHILD, prefix, "1" if no_placement else "0"], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "GLOG_minloglevel": "2"})
    if out.returncode != 0:
        raise SystemExit(f"error: the predictor could not be created: {out.stderr.strip().splitlines()[-1:]}")
    lines = out.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("IR after lowering")]
    if not starts:
        raise SystemExit("error: no 'IR after lowering' in the predictor's output")
    return lines[starts[-1]:]  # the main program is lowered last


def parse(lines: list[str]) -> list[dict]:
    ops = []
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        _, results, _, operands, attrs, _, out_types = m.groups()
        op_name = re.search(r'op_name:"([^"]+)"', attrs)
        ops.append({"results": [r.strip() for r in results.split(",") if r.strip()],
                    "operands": [o.strip() for o in operands.split(",") if o.strip()],
                    "op_name": op_name.group(1) if op_name else m.group(3), "out": out_types})
    return ops


def _dims(type_text: str):
    m = re.search(r"<([-0-9x]*?)x?([a-z]+[0-9]*)>", type_text)
    if not m:
        return None, None
    dims = [int(d) for d in m.group(1).split("x")] if m.group(1) else []
    return dims, m.group(2)


def _shape_ok(dims) -> bool:
    return dims is not None and not any(d == -1 and (len(dims) == 1 or i != 0) for i, d in enumerate(dims))


def scan(ops: list[dict]) -> dict:
    import paddle

    uses: dict = {}
    for i, op in enumerate(ops):
        for value in op["operands"]:
            uses.setdefault(value, []).append(i)
    found: dict = {}
    for i, op in enumerate(ops):
        if op["op_name"] != "pd_op.onednn_to_paddle_layout":
            continue
        source = op["operands"][0]
        in_dims, in_dtype = _dims(op["out"])
        todo = [(j, op["results"][0]) for j in uses.get(op["results"][0], [])]
        while todo:
            j, value = todo.pop()
            reader = ops[j]
            name = reader["op_name"]
            if name in VIEWS and reader["results"]:
                todo += [(k, reader["results"][0]) for k in uses.get(reader["results"][0], [])]
                continue
            out_dims, out_dtype = _dims(reader["out"].split(",")[0])
            kernel = name.split(".", 1)[-1]
            read_later = any(k > j for k in uses.get(source, []))
            hazard = (hasattr(paddle._C_ops, kernel + "_") and kernel != "transpose"
                      and reader["operands"].index(value) == 0 and in_dtype == out_dtype
                      and _shape_ok(in_dims) and _shape_ok(out_dims) and read_later)
            key = (hazard, name, str(in_dims), read_later)
            found[key] = found.get(key, 0) + 1
    return found


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python scripts/investigations/onednn_hazard_scan.py MODEL_PREFIX [--no-placement]", file=sys.stderr)
        return 2
    found = scan(parse(lowered_program(argv[0], "--no-placement" in argv[1:])))
    for (hazard, name, dims, read_later), count in sorted(found.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        print(f"{'HAZARD' if hazard else 'ok    '} {name} reads a oneDNN value {dims} x{count}"
              f"{' (read again later)' if read_later else ''}")
    return 1 if any(key[0] for key in found) else 0


if __name__ == "__main__":
    sys.exit(main())
