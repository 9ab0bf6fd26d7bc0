"""The engines a CPU user leaves us for, on the same weights: llama.cpp and HF transformers.

Each peer variant (``--peers``) runs the benchmark's float32 llama, its weights written
once from the PaddleNLP model (``bench.models``' "weights" export, a float32 ``.npz``):

- ``llama.cpp-f32``, ``llama.cpp-bf16``, ``llama.cpp-q8_0``: a GGUF file written with
  the ``gguf`` package (llama architecture; q and k rows permuted as llama.cpp's own
  converter permutes them, since GGML's llama rope rotates adjacent pairs where
  PaddleNLP's and HF's rotate halves; a placeholder vocabulary, the prompts being ids),
  run by llama-cpp-python with ``n_threads`` and ``n_threads_batch`` both the run's
  threads (its prompt processing would take every core) and the KV cache reset before
  every run (it reuses a prefix it has seen: a prefill must start from nothing).
- ``hf-float32``, ``hf-bf16``: ``transformers``' ``LlamaForCausalLM`` from a
  ``safetensors`` checkpoint of the same weights, loaded in that dtype (bf16: the
  float32 weights rounded, as our bf16 variant's), on ``torch.set_num_threads(threads)``.

Greedy, the same prompt ids and the same prefill and per-token definitions as ours (a
run of one new token; the whole run minus it). The peers are optional extras (``pip
install -e ".[peers]"``): a peer asked for without them is one line saying so.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXTRAS = 'pip install -e ".[peers]"'


@dataclass(frozen=True)
class Peer:
    engine: str  # "llama.cpp" or "hf": the worker's predictor kind
    weights: str  # the format its weights are held in
    dtype: str  # the row's dtype: what its bound counts (roofline.DTYPE_BYTES)
    ours: str  # our variant of the same precision, its row's comparison
    kv_dtype: str  # its KV cache's (llama.cpp's is float16 whatever its weights')
    modules: tuple  # what it needs installed


_LLAMA_CPP, _HF = ("gguf", "llama_cpp"), ("torch", "transformers", "safetensors")
PEERS = {
    "llama.cpp-f32": Peer("llama.cpp", "F32", "float32", "static-cache", "float16", _LLAMA_CPP),
    "llama.cpp-bf16": Peer("llama.cpp", "BF16", "bfloat16", "bf16", "float16", _LLAMA_CPP),
    "llama.cpp-q8_0": Peer("llama.cpp", "Q8_0", "q8_0", "static-cache", "float16", _LLAMA_CPP),
    "hf-float32": Peer("hf", "float32", "float32", "static-cache", "float32", _HF),
    "hf-bf16": Peer("hf", "bfloat16", "bfloat16", "bf16", "bfloat16", _HF),
}


def missing_extras(names) -> str | None:
    """One line for the first peer of ``names`` whose modules are not installed, or None."""
    for name in names:
        absent = [module for module in PEERS[name].modules if importlib.util.find_spec(module) is None]
        if absent:
            return f"--peers {name} needs {', '.join(absent)}: {EXTRAS}"
    return None


# -- the weights --------------------------------------------------------------------------------


def save_weights(model, path: Path) -> None:
    """The PaddleNLP llama's float32 weights, HF's names and layout (``[out, in]``), as one ``.npz``."""
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    weights = {}
    for name, value in state.items():
        if name == "lm_head.weight":
            weights[name] = value.T  # PaddleNLP's head is [hidden, vocab]
        elif value.ndim == 2 and name != "llama.embed_tokens.weight":
            weights[name.replace("llama.", "model.", 1)] = value.T  # Paddle's Linear is [in, out]
        else:
            weights[name.replace("llama.", "model.", 1)] = value
    np.savez(path, **{name: np.ascontiguousarray(value, dtype=np.float32) for name, value in weights.items()})


def _hf_config(settings: dict) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": settings["vocab_size"],
            "hidden_size": settings["hidden_size"], "intermediate_size": settings["intermediate_size"],
            "num_hidden_layers": settings["layers"], "num_attention_heads": settings["heads"],
            "num_key_value_heads": settings["kv_heads"], "max_position_embeddings": settings["max_position_embeddings"],
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
            "bos_token_id": 1, "eos_token_id": None, "pad_token_id": 0, "torch_dtype": "float32"}


def write_hf(weights_path: Path, settings: dict, directory: Path) -> Path:
    """A ``save_pretrained``-shaped directory of the weights: ``config.json``, ``model.safetensors``."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    with np.load(weights_path) as weights:
        save_file({name: weights[name] for name in weights.files}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(_hf_config(settings), indent=2))
    return directory


def _permute_for_ggml_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of q or k reordered so that GGML's rope, which rotates adjacent pairs,
    computes what rotating halves does on the original rows (llama.cpp's converter)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_gguf(weights_path: Path, settings: dict, path: Path, weights_format: str) -> Path:
    """A GGUF file of the weights, its matrices in ``weights_format`` (F32, BF16, Q8_0;
    the norms stay F32, as llama.cpp keeps them)."""
    import logging

    import gguf

    logging.getLogger("gguf").setLevel(logging.WARNING)  # it logs every file it writes at INFO
    quant = {"F32": gguf.GGMLQuantizationType.F32, "BF16": gguf.GGMLQuantizationType.BF16,
             "Q8_0": gguf.GGMLQuantizationType.Q8_0}[weights_format]
    file_type = {"F32": gguf.LlamaFileType.ALL_F32, "BF16": gguf.LlamaFileType.MOSTLY_BF16,
                 "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[weights_format]
    h, heads, kv_heads = settings["hidden_size"], settings["heads"], settings["kv_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(settings["max_position_embeddings"])
    writer.add_embedding_length(h)
    writer.add_block_count(settings["layers"])
    writer.add_feed_forward_length(settings["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(h // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(file_type)
    vocab = settings["vocab_size"]  # placeholder pieces: the benchmark feeds ids
    writer.add_tokenizer_model("llama")
    writer.add_token_list([b"<unk>", b"<s>", b"</s>"] + [f"t{i}".encode() for i in range(3, vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
                           + [gguf.TokenType.NORMAL] * (vocab - 3))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def add(name: str, value: np.ndarray) -> None:
        if value.ndim == 1 or quant == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(value, quant), raw_dtype=quant)

    with np.load(weights_path) as weights:
        add("token_embd.weight", weights["model.embed_tokens.weight"])
        for layer in range(settings["layers"]):
            for hf_name, gguf_name in GGUF_NAMES.items():
                value = weights[f"model.layers.{layer}.{hf_name}.weight"]
                if hf_name == "self_attn.q_proj":
                    value = _permute_for_ggml_rope(value, heads)
                elif hf_name == "self_attn.k_proj":
                    value = _permute_for_ggml_rope(value, kv_heads)
                add(f"blk.{layer}.{gguf_name}.weight", value)
        add("output_norm.weight", weights["model.norm.weight"])
        add("output.weight", weights["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def prepare_peer(name: str, weights_path: Path, workdir: Path, settings: dict) -> tuple:
    """The worker's ``(kind, path)`` for peer ``name``, its files written under ``workdir``."""
    peer = PEERS[name]
    if peer.engine == "llama.cpp":
        workdir.mkdir(parents=True, exist_ok=True)
        path = write_gguf(weights_path, settings, workdir / f"{name}.gguf", peer.weights)
    else:
        hf_dir = workdir / "hf"
        path = hf_dir if (hf_dir / "config.json").is_file() else write_hf(weights_path, settings, hf_dir)
    return (peer.engine, f"{path}|{peer.weights}")


# -- running (in the worker, a process without Paddle) ------------------------------------------


class LlamaCppRunner:
    def __init__(self, path: str, threads: int, max_tokens: int):
        from llama_cpp import Llama

        self.model = Llama(model_path=path, n_ctx=max_tokens, n_threads=threads, n_threads_batch=threads,
                           verbose=False)

    def run(self, feed: dict) -> tuple[float, np.ndarray]:
        ids, new_tokens = feed["input_ids"], int(feed["max_new_tokens"][0])
        rows = []
        start = time.perf_counter()
        for row in ids:
            self.model.reset()  # no prefix of an earlier run is reused
            tokens = []
            for token in self.model.generate(row.tolist(), top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
                tokens.append(token)
                if len(tokens) == new_tokens:
                    break
            rows.append(tokens)
        return time.perf_counter() - start, np.array(rows, dtype="int64")


class HFRunner:
    def __init__(self, path: str, dtype: str, threads: int):
        import torch
        from transformers import LlamaForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = LlamaForCausalLM.from_pretrained(path, torch_dtype=getattr(torch, dtype)).eval()

    def run(self, feed: dict) -> tuple[float, np.ndarray]:
        torch = self.torch
        ids, new_tokens = torch.from_numpy(feed["input_ids"]), int(feed["max_new_tokens"][0])
        with torch.inference_mode():
            start = time.perf_counter()
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
            seconds = time.perf_counter() - start
        return seconds, out[:, ids.shape[1]:].numpy()


def import_engine(kind: str) -> None:
    """Load the engine's libraries (what the worker's baseline RSS includes)."""
    if kind == "llama.cpp":
        import llama_cpp  # noqa: F401
    else:
        import torch  # noqa: F401
        import transformers  # noqa: F401


def create_runner(kind: str, spec: str, threads: int, max_tokens: int):
    path, weights = spec.split("|")
    if kind == "llama.cpp":
        return LlamaCppRunner(path, threads, max_tokens)
    return HFRunner(path, weights, threads)
