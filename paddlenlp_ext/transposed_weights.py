"""A bfloat16 model's weight matrices exported as ``[out, in]``, read with ``transpose_y``.

Why. On Paddle 3.3.1's CPU wheel a bfloat16 product ``x @ W`` runs on oneDNN's
bfloat16 matmul, with ``W`` as it is stored (no packing). Stored ``[in, out]``, as
``paddle.nn.Linear`` keeps it, one [1, 4096] x [4096, 11008] product took 15.6-16.2 ms
on one quiet thread; stored ``[out, in]`` and read with ``transpose_y=True``, 8.0-8.1 ms
(float32's MKL GEMM: 7.1-7.6, at twice the bytes), 4.5 ms on two threads; [256, 4096]
rows took 115 ms against 130 (200 GFLOP/s; float32's oneDNN matmul 80-100, on a loaded
machine). The predictor's memory stays flat over prompt lengths (no per-shape copy of
the weights, unlike oneDNN's packed ``fc``).

What. ``transposed_weights(model)`` is a block in which every ``paddle.nn.Linear`` and
PaddleNLP llama ``LlamaLMHead`` of ``model`` whose weight is a bfloat16 matrix holds
that weight transposed, and computes ``matmul(x, W_t, transpose_y=True)`` (plus its
bias): the same product, so a trace inside the block saves the transposed weights.
On exit every weight is put back as it was. Each matrix is replaced one at a time, so
the model never holds more than one extra matrix (once what was traced in the block is
collected, which the exit does first). A weight two layers share (tied
embeddings) is left as it is.
"""

from __future__ import annotations

import contextlib
import gc
from collections import Counter

import paddle

_TRANSPOSED = "_paddlenlp_ext_weight_transposed"


def _linear_forward(self, input):
    """``paddle.nn.Linear.forward``, for a weight held transposed."""
    if not getattr(self, _TRANSPOSED, False):
        return _original_forwards[paddle.nn.Linear](self, input)
    output = paddle.matmul(input, self.weight, transpose_y=True)
    return output if self.bias is None else output + self.bias


def _lm_head_forward(self, hidden_states, tensor_parallel_output=None):
    """PaddleNLP 2.8.1's ``LlamaLMHead.forward`` on one device, for a weight held transposed."""
    from paddlenlp.transformers.llama.modeling import LlamaLMHead

    if not getattr(self, _TRANSPOSED, False):
        return _original_forwards[LlamaLMHead](self, hidden_states, tensor_parallel_output)
    return paddle.matmul(hidden_states, self.weight, transpose_y=True)


_original_forwards = {}


def _candidates(model) -> list:
    """The layers whose weight the block transposes: bfloat16 matrices no other layer
    shares, in a llama head only on one device (its forward is PaddleNLP's otherwise)."""
    from paddlenlp.transformers.llama.modeling import LlamaLMHead

    layers = [layer for layer in model.sublayers(include_self=True)
              if isinstance(layer, (paddle.nn.Linear, LlamaLMHead)) and layer.weight is not None]
    uses = Counter(id(parameter) for layer in model.sublayers(include_self=True)
                   for parameter in layer.parameters(include_sublayers=False))
    chosen = []
    for layer in layers:
        weight = layer.weight
        if weight.dtype != paddle.bfloat16 or len(weight.shape) != 2 or uses[id(weight)] != 1:
            continue
        if isinstance(layer, LlamaLMHead) and (layer.config.sequence_parallel or weight.is_distributed):
            continue
        chosen.append(layer)
    return chosen


def _replace_weight(layer, transposed: bool) -> None:
    old = layer.weight
    new = layer.create_parameter(shape=[old.shape[1], old.shape[0]], dtype=old.dtype,
                                 default_initializer=paddle.nn.initializer.Constant(0.0))
    new.set_value(old.transpose([1, 0]))
    new.stop_gradient = old.stop_gradient
    layer.weight = new  # the old matrix is freed here
    setattr(layer, _TRANSPOSED, transposed)


@contextlib.contextmanager
def transposed_weights(model):
    """The block described in the module's docstring (call in dygraph mode); yields how
    many weights it transposed."""
    from paddlenlp.transformers.llama.modeling import LlamaLMHead

    layers = _candidates(model)
    patched = {paddle.nn.Linear: _linear_forward, LlamaLMHead: _lm_head_forward}
    for owner, forward in patched.items():
        _original_forwards[owner] = owner.forward
        owner.forward = forward
    done = []
    try:
        with paddle.no_grad():
            for layer in layers:
                _replace_weight(layer, True)
                done.append(layer)
        yield len(done)
    finally:
        # A program traced in the block (paddle.jit.to_static) holds the transposed
        # matrices through reference cycles until the collector runs: without this, the
        # model held both forms at the end (2.5 -> 4.3 GiB for 4 bfloat16 layers of
        # llama2-7B's shape; a whole llama2-7B ran out of 24 GiB).
        gc.collect()
        with paddle.no_grad():
            for layer in done:
                _replace_weight(layer, False)
        for owner in patched:
            owner.forward = _original_forwards.pop(owner)
