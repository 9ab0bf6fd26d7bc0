"""Bisect Paddle Inference's new-IR oneDNN configuration on a static generation model.

On Paddle 3.3.1 (CPU), a translated decoding loop run by Paddle Inference with
``enable_new_ir(True)`` and oneDNN on gives wrong tokens (the first right, then
diverging). This script loads a static model directory (``model.pdmodel``, translated
to PIR as ``StaticGenerationModel`` does, or ``model.json``), optionally runs
``remove_loop_assign`` on it, saves it as PIR and runs it greedily on one prompt in
several predictor configurations:

- ``onednn=off``: the reference (``StaticGenerationModel``'s configuration);
- ``onednn=on``: Paddle's CPU default;
- ``onednn=on delete=P``: oneDNN on with ``Config.delete_pass(P)``, for every pass of
  the new-IR CPU + oneDNN pipeline (``ONEDNN_PASSES``, ``GENERAL_PASSES``) and for the
  group of all oneDNN fuse passes;
- ``onednn=on inplace_blacklist=OP``: oneDNN on with ``FLAGS_ir_inplace_kernel_blacklist``
  set to OP while the predictor is created (when the executor runs that pass), for each op the executor's
  ``inplace_pass`` turns into its in-place version (``INPLACE_OPS``).

Each predictor runs the prompt twice; a configuration is correct when both runs give
the reference's tokens. A configuration Paddle cannot run (deleting
``replace_fetch_with_shadow_output_pass``: no fetch variable) is reported as an error.
One line per configuration, or one JSON object with ``--json``:

    python scripts/investigations/onednn_bisect.py MODEL_DIR [--clean] [--prompt 1,17,45] [--max-new-tokens 10] [--json]

What it found on Paddle 3.3.1 (see ``tests/test_inference.py``): only deleting
``inplace_pass`` (or ``onednn_placement_pass``, which leaves only the fused matmuls on
oneDNN and most of the prefill's gain off), or
blacklisting ``pd_op.pow`` from in-placing, gives the right tokens. The inplace pass
makes a plain CPU kernel write over its input when it is the input's last user; when
that input is the output of ``pd_op.onednn_to_paddle_layout``, which shares its
input's buffer (no copy for a plain layout), the write also changes the oneDNN value
behind it, which a later op still reads. In the llama loop that is RMSNorm's
``pow(h, 2)`` over the new token's hidden state (static shape ``[-1, 1, hidden]``; the
prefill's ``[-1, -1, hidden]`` fails the pass's shape check, hence "first token
right"), after which ``rsqrt(...) * h`` reads ``h ** 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from paddlenlp_ext.cli_flags import OneLineParser
from paddlenlp_ext.quiet import native_output_to, quiet_paddle

# The passes Paddle Inference 3.3.1 logs ("Running PIR pass [...]") for a CPU config
# with enable_new_ir(True) and enable_mkldnn(), in order (paddle_pass_builder.cc's
# oneDNN list for PIR, then the general ones the analysis predictor and the executor
# run). Deleting a pass that does not run is harmless.
ONEDNN_PASSES = (
    "depthwise_conv_onednn_pass", "squeeze_transpose_onednn_fuse_pass", "conv2d_bn_onednn_fuse_pass",
    "conv2d_bias_bn_onednn_fuse_pass", "conv2d_bias_fuse_pass", "conv2d_transpose_bn_fuse_pass",
    "conv2d_transpose_bias_bn_fuse_pass", "conv2d_transpose_bias_fuse_pass", "conv3d_bias_fuse_pass",
    "conv_elementwise_add_onednn_fuse_pass", "conv_activation_mkldnn_fuse_pass",
    "conv_concat_activation_mkldnn_fuse_pass", "matmul_scale_fuse_pass", "scale_matmul_fuse_pass",
    "reshape_transpose_matmul_fuse_pass", "matmul_transpose_reshape_fuse_pass", "matmul_add_act_fuse_pass",
    "matmul_reshape_add_fuse_pass", "fc_onednn_enable_pass", "matmul_elementwise_add_fuse_pass",
    "matmul_activation_fuse_pass", "fc_activation_fuse_pass", "self_attention_fuse_pass",
    "batch_norm_act_fuse_pass", "softplus_activation_fuse_pass", "shuffle_channel_detect_pass",
    "elementwise_act_onednn_fuse_pass", "operator_scale_onednn_fuse_pass", "operator_unsqueeze_onednn_fuse_pass",
    "operator_reshape_onednn_fuse_pass", "onednn_placement_pass",
)
GENERAL_PASSES = (
    "add_shadow_output_after_dead_parameter_pass", "delete_quant_dequant_linear_op_pass",
    "delete_weight_dequant_linear_op_pass", "transfer_layout_pass", "common_subexpression_elimination_pass",
    "constant_folding_pass", "dead_code_elimination_pass", "replace_fetch_with_shadow_output_pass",
    "remove_shadow_feed_pass", "inplace_pass",
)
# Ops the executor's inplace_pass makes in-place in the tiny llama loop with oneDNN on
# (GLOG_vmodule=inplace_pass=6: "... will change to inplace version op").
INPLACE_OPS = ("pd_op.pow", "pd_op.rsqrt", "pd_op.scale", "pd_op.add", "pd_op.unsqueeze", "pd_op.where",
               "pd_op.bitwise_and", "pd_op.bitwise_or")
INPLACE_BLACKLIST_FLAG = "FLAGS_ir_inplace_kernel_blacklist"

DEFAULT_PROMPT = "1,17,45,300,999,5"


class BisectError(Exception):
    """A bad argument or model: reported on one line, exit code 2."""


def _prompt(text: str) -> list[int]:
    try:
        ids = [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids, got {text!r}") from None
    if any(i < 0 for i in ids):
        raise argparse.ArgumentTypeError(f"expected non-negative token ids, got {text!r}")
    return ids


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a static model directory (model.pdmodel or model.json, model.pdiparams)")
    parser.add_argument("--clean", action="store_true", help="run remove_loop_assign on the program first")
    parser.add_argument("--prompt", type=_prompt, default=_prompt(DEFAULT_PROMPT),
                        help=f"comma-separated prompt token ids (default {DEFAULT_PROMPT})")
    parser.add_argument("--max-new-tokens", type=_positive, default=10, help="tokens to generate (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


# -- configurations ---------------------------------------------------------------------------


def configurations() -> list[dict]:
    """Every configuration tried, the reference (oneDNN off) first."""
    found = [{"onednn": False, "delete": [], "inplace_blacklist": ""},
             {"onednn": True, "delete": [], "inplace_blacklist": ""}]
    for name in ONEDNN_PASSES + GENERAL_PASSES:
        found.append({"onednn": True, "delete": [name], "inplace_blacklist": ""})
    fuse = [name for name in ONEDNN_PASSES if name != "onednn_placement_pass"]
    found.append({"onednn": True, "delete": fuse, "inplace_blacklist": ""})
    for op in INPLACE_OPS:
        found.append({"onednn": True, "delete": [], "inplace_blacklist": op})
    found.append({"onednn": True, "delete": [], "inplace_blacklist": ",".join(INPLACE_OPS)})
    return found


def describe(config: dict) -> str:
    words = [f"onednn={'on' if config['onednn'] else 'off'}"]
    if config["delete"]:
        fuse = len(config["delete"]) > 1
        words.append("delete=<all oneDNN fuse passes>" if fuse else f"delete={config['delete'][0]}")
    if config["inplace_blacklist"]:
        words.append(f"inplace_blacklist={config['inplace_blacklist']}")
    return " ".join(words)


def paddle_config(prefix: str, config: dict):
    """A Paddle Inference Config for ``prefix``.json/.pdiparams: CPU, new IR, as described."""
    from paddle import inference

    paddle_config = inference.Config(prefix + ".json", prefix + ".pdiparams")
    paddle_config.enable_new_ir(True)
    paddle_config.disable_gpu()
    paddle_config.disable_glog_info()
    if config["onednn"]:
        paddle_config.enable_mkldnn()
    else:
        paddle_config.disable_mkldnn()
    for name in config["delete"]:
        paddle_config.delete_pass(name)
    return paddle_config


def create(prefix: str, config: dict):
    """A predictor for ``config``; the in-place blacklist flag is set only around its creation
    (Paddle's executor runs inplace_pass when the predictor is created)."""
    import paddle
    from paddle import inference

    previous = paddle.get_flags([INPLACE_BLACKLIST_FLAG])
    paddle.set_flags({INPLACE_BLACKLIST_FLAG: config["inplace_blacklist"]})
    try:
        return inference.create_predictor(paddle_config(prefix, config))
    finally:
        paddle.set_flags(previous)


def feed_for(prompt: list[int], max_new_tokens: int) -> dict:
    """Greedy inputs for one prompt, by the names a generation export may take."""
    from paddlenlp_ext.predictor import PredictorArgument, decoding_settings, model_inputs

    ids = np.array([prompt], dtype="int64")
    greedy = decoding_settings(PredictorArgument(decode_strategy="greedy_search"))
    return model_inputs(ids, np.ones_like(ids), max_new_tokens, greedy)


def run(predictor, feed: dict) -> np.ndarray:
    from paddlenlp_ext.inference import run_predictor

    unknown = [name for name in predictor.get_input_names() if name not in feed]
    if unknown:
        raise BisectError(f"the model takes an input this script does not know: {unknown[0]}")
    return run_predictor(predictor, feed)[0]


def prepare(model_dir: str, clean: bool, staging: str) -> str:
    """Save the model's program (cleaned if asked) as PIR under ``staging``: the prefix."""
    from paddlenlp_ext import remove_loop_assign
    from paddlenlp_ext.files import MODEL_PREFIX
    from paddlenlp_ext.program_files import ModelDirectoryError, load_program, save_program

    try:
        loaded = load_program(model_dir)
    except ModelDirectoryError as error:
        raise BisectError(str(error)) from None
    if clean:
        remove_loop_assign(loaded.program, outputs=loaded.outputs)
    prefix = os.path.join(staging, MODEL_PREFIX)
    save_program(loaded, prefix)
    return prefix


def bisect(model_dir: str, clean: bool = False, prompt=None, max_new_tokens: int = 10, configs=None) -> dict:
    """Run every configuration; ``results`` holds, per configuration, its tokens (first
    run) and whether both runs gave the reference's (oneDNN off) tokens."""
    import paddle

    from paddlenlp_ext.errors import error_line

    paddle.enable_static()
    feed = feed_for(prompt or _prompt(DEFAULT_PROMPT), max_new_tokens)
    configs = configs or configurations()
    results = []
    with tempfile.TemporaryDirectory(prefix="onednn_bisect-") as staging:
        prefix = prepare(model_dir, clean, staging)
        reference = None
        for config in configs:
            try:
                predictor = create(prefix, config)
                first, second = run(predictor, feed), run(predictor, feed)
            except BisectError:
                raise
            except Exception as error:  # some passes cannot be left out (Paddle raises)
                if reference is None:
                    raise BisectError(f"the reference configuration fails: {error_line(error)}") from None
                results.append({**config, "name": describe(config), "correct": False, "error": error_line(error),
                                "tokens": None, "second_run_tokens": None})
                continue
            if reference is None:  # the first configuration is the reference
                reference = first
            correct = bool(np.array_equal(first, reference) and np.array_equal(second, reference))
            results.append({**config, "name": describe(config), "correct": correct, "error": None,
                            "tokens": first.tolist(), "second_run_tokens": second.tolist()})
    return {"model": model_dir, "clean": clean, "reference": reference.tolist(), "results": results}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with quiet_paddle(), native_output_to(2, fds=(1,)):
            found = bisect(args.model_dir, args.clean, args.prompt, args.max_new_tokens)
    except BisectError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(found))
        return 0
    print(f"{found['model']} (clean: {found['clean']}); reference tokens (onednn=off): {found['reference']}")
    for result in found["results"]:
        if result["error"]:
            print(f"error   {result['name']}: {result['error']}")
        else:
            verdict = "correct" if result["correct"] else "WRONG  "
            print(f"{verdict} {result['name']}: {result['tokens']}")
    right = [r["name"] for r in found["results"] if r["correct"] and r["onednn"]]
    print(f"correct with oneDNN on: {', '.join(right) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
