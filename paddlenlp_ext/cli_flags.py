"""What the command-line entry points share in parsing."""

from __future__ import annotations

import argparse


def boolean_flag(text: str) -> bool:
    """PaddleNLP's boolean flags take a value (``--benchmark true``) or none (``--benchmark``)."""
    value = text.lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors (a wrong type, an unknown flag) are one
    ``error:`` line and exit code 2, without argparse's usage block first."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


# The flags of PaddleNLP 2.8's llm/predictor.py (its PredictorArgument and
# ModelArgument, which llm/export_model.py takes too) that this project does not run.
# Both CLIs accept each at PaddleNLP's default, so a command copied from PaddleNLP's
# docs parses; any other value is refused in one line saying why (``refused_flag``).
_FUSED = ("needs PaddleNLP's fused inference models and their GPU custom ops (paddlenlp_ops); this predictor "
          "runs the model's own generation loop on Paddle Inference")
_AVX = "PaddleNLP's AVX mode needs xFasterTransformer's custom ops"
_TUNING = ("is not applied here: merge the tuned weights into the checkpoint first (PaddleNLP's "
           "llm/merge_lora_params.py) and give that checkpoint")
PADDLENLP_ONLY_FLAGS = {
    # name: (PaddleNLP's default, the values that mean it, why another value is refused)
    "model_prefix": ("model", ("model",), "static models are read as model.json or model.pdmodel with "
                     "model.pdiparams: rename the files"),
    "lora_path": (None, (None,), f"LoRA {_TUNING}"),
    "prefix_path": (None, (None,), f"prefix tuning {_TUNING}"),
    "export_precache": (False, (False,), f"prefix tuning {_TUNING}"),
    "inference_model": (False, (False,), _FUSED),
    "block_attn": (False, (False,), _FUSED),
    "block_size": (64, (64,), f"block attention {_FUSED}"),
    "append_attn": (False, (False,), _FUSED),
    "use_flash_attention": (False, (False,), "flash attention needs a GPU build of PaddleNLP's custom ops"),
    "quant_type": ("", ("", "None", None), f"quantized inference {_FUSED}"),
    "cachekv_int8_type": (None, (None, "None"), f"an int8 KV cache {_FUSED}"),
    "use_cachekv_int8": (False, (False, None, "None"), f"an int8 KV cache {_FUSED}"),
    "use_fake_parameter": (False, (False,), f"quantized inference {_FUSED}"),
    "avx_model": (False, (False,), f"{_AVX}; on CPU, --dtype bfloat16 runs this project's bfloat16 kernels"),
    "avx_type": (None, (None,), f"{_AVX}; on CPU, --dtype bfloat16 runs this project's bfloat16 kernels"),
    "avx_cachekv_type": ("fp16", ("fp16",), _AVX),
    "chat_template": (None, (None,), "chat templates are not applied: give each prompt as the model expects it"),
    "enable_memory_optim": (True, (True,), "this predictor configures Paddle Inference itself (docs/predictor.md)"),
    "init_fleet_worker": (True, (True,), "tensor parallelism (fleet) is not run: one process holds the model"),
    "model_type": (None, (None,), "PaddleNLP's modeling files under llm/ (gpt-3, ernie-3.5-se, llama-img2txt) "
                   "are not shipped: give a save_pretrained checkpoint"),
}


def add_paddlenlp_only_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``PADDLENLP_ONLY_FLAGS`` to ``parser``, typed as PaddleNLP types them and
    hidden from ``--help``; each parses to its default when absent."""
    for name, (default, _, _) in PADDLENLP_ONLY_FLAGS.items():
        if isinstance(default, bool):
            parser.add_argument(f"--{name}", type=boolean_flag, nargs="?", const=True, default=default,
                                help=argparse.SUPPRESS)
        else:
            parser.add_argument(f"--{name}", type=type(default) if default is not None else str, default=default,
                                help=argparse.SUPPRESS)


def refused_flag(namespace: argparse.Namespace) -> str | None:
    """One line for the first of ``PADDLENLP_ONLY_FLAGS`` given a value this project
    cannot honour, or None."""
    for name, (_, accepted, reason) in PADDLENLP_ONLY_FLAGS.items():
        value = getattr(namespace, name)
        if value not in accepted:
            return f"--{name} {str(value).lower() if isinstance(value, bool) else value}: {reason}"
    return None
