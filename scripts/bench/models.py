"""The benchmark's models: one random llama, exported by each decoding loop, and its prompts."""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
from pathlib import Path

import numpy as np

from paddlenlp_ext.decoding_settings import settings_feed

# Greedy search (top_k 1), fed to either loop; a numpy-only module, so that the timing
# child does not import PaddleNLP.
GREEDY_SETTINGS = settings_feed(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.0, seed=0)

# The decoding loops a model is exported with (``--loops``), as export_model.py's --loop:
# this project's GenerationLoop, and PaddleNLP's own ``to_static`` (``sample_d2s``).

# Model shapes (``--preset``). ``intermediate_size`` None: llama's 8/3 of the hidden size.
PRESETS = {
    "toy": {"layers": 4, "hidden_size": 512, "heads": 8, "kv_heads": 8, "intermediate_size": None,
            "vocab_size": 2000},
    "llama2-7b": {"layers": 32, "hidden_size": 4096, "heads": 32, "kv_heads": 32, "intermediate_size": 11008,
                  "vocab_size": 32000},
    "llama3-8b": {"layers": 32, "hidden_size": 4096, "heads": 32, "kv_heads": 8, "intermediate_size": 14336,
                  "vocab_size": 128256},
}


def default_intermediate_size(hidden_size: int) -> int:
    """The toy preset's: llama's 8/3 of the hidden size, rounded up to a multiple of 32."""
    return 32 * math.ceil(8 * hidden_size / 3 / 32)


def llama_config(settings: dict, layers: int):
    from paddlenlp.transformers import LlamaConfig

    return LlamaConfig(vocab_size=settings["vocab_size"], hidden_size=settings["hidden_size"],
                       intermediate_size=settings["intermediate_size"], num_hidden_layers=layers,
                       num_attention_heads=settings["heads"], num_key_value_heads=settings["kv_heads"],
                       max_position_embeddings=settings["max_position_embeddings"], rms_norm_eps=1e-5,
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def random_llama(settings: dict, layers: int, dtype: str = "float32"):
    """A PaddleNLP ``LlamaForCausalLM`` with weights from ``paddle.seed(settings["seed"])``,
    drawn and held in ``dtype`` (call in dygraph mode). A bfloat16 one is built in
    bfloat16, never held in float32: a whole llama2-7B fits this way (12.6 GiB, 25 in
    float32); its weights are not those of the float32 model rounded."""
    import paddle
    from paddlenlp.transformers import LlamaForCausalLM

    paddle.seed(settings["seed"])
    config = llama_config(settings, layers)
    config.dtype = dtype  # what the export reads the model's dtype from
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)  # the parameters' dtype as they are created
    try:
        model = LlamaForCausalLM(config)
    finally:
        paddle.set_default_dtype(previous)
    model.eval()
    return model


# What export_model can write: a format of the loop with its concat KV cache (PaddleNLP's),
# "static-cache": GenerationLoop's static cache, in the legacy format, "weights": the
# float32 weights for the peers (``bench.peers``: ``weights.npz``), or "bf16": the model
# cast to bfloat16, as a bfloat16 model exports (PIR; on GenerationLoop, with the static
# cache). "bf16" comes last: the float32 exports are written before the cast.
EXPORTS = ("legacy", "pir", "static-cache", "weights", "bf16")


def export_model(settings: dict, layers: int, directory: Path, loop: str = "generation_loop",
                 formats=("legacy", "pir")) -> dict:
    """Greedy decoding of a fresh llama exported by ``loop`` as each of ``formats`` (from
    ``EXPORTS``): ``{format: model directory}`` (``model.pdmodel`` or ``model.json``,
    ``model.pdiparams``). "bf16" casts the same model object to bfloat16 after the float32
    exports, so its weights are theirs rounded to bfloat16; "bf16" alone builds the model
    in bfloat16 (``random_llama``).

    It runs in a child process (spawned), so that the model's weights are gone when it
    returns: the benchmark then loads each export, one at a time.

    No end-of-sequence token is ever produced, so every run decodes exactly the tokens
    asked for and runs are comparable: GenerationLoop gets none, PaddleNLP's loop an id
    outside the vocabulary (it bakes ``generation_config.eos_token_id`` into the program).
    """
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        child.submit(_export_in_this_process, settings, layers, directory, loop, tuple(formats)).result()
    return {fmt: directory / loop / fmt for fmt in formats}


def _export_in_this_process(settings: dict, layers: int, directory: Path, loop: str, formats: tuple) -> None:
    from paddlenlp_ext.decoding import DecodingConfig
    from paddlenlp_ext.export import export_generation_model
    from paddlenlp_ext.paddle_modes import dygraph_mode
    from paddlenlp_ext.quiet import quiet_paddle, quiet_paddlenlp

    with quiet_paddle(), dygraph_mode():
        quiet_paddlenlp()  # it logs every config it saves with the exports
        model = random_llama(settings, layers, "bfloat16" if formats == ("bf16",) else "float32")
        model.generation_config.eos_token_id = settings["vocab_size"]
        for fmt in sorted(formats, key=EXPORTS.index):
            if fmt == "weights":
                from .peers import save_weights

                (directory / loop / fmt).mkdir(parents=True)
                save_weights(model, directory / loop / fmt / "weights.npz")
                continue
            if fmt == "bf16":
                model.to(dtype="bfloat16")
                model.config.dtype = "bfloat16"  # what the export reads the model's dtype from
            static = fmt == "static-cache" or (fmt == "bf16" and loop == "generation_loop")
            export_generation_model(model, directory / loop / fmt, decoding=DecodingConfig(eos_token_id=None),
                                    format="legacy" if fmt == "static-cache" else "pir" if fmt == "bf16" else fmt,
                                    remove_loop_assign=False, loop=loop, cache="static" if static else "concat")


def prompt(settings: dict, context: int, new_tokens: int) -> dict:
    """Random prompt ids (3 and up: no special tokens) and every input either loop takes,
    for greedy search (top-k sampling with k = 1, in both loops)."""
    ids = np.random.default_rng([settings["seed"], context]).integers(
        3, settings["vocab_size"], size=(settings["batch_size"], context), dtype="int64")
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "position_ids": np.broadcast_to(np.arange(context, dtype="int64"), ids.shape).copy(),
            "max_new_tokens": np.array([new_tokens], dtype="int64"), **GREEDY_SETTINGS}
