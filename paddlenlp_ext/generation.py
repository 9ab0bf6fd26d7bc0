"""Static-graph decoding loops for PaddleNLP causal language models."""

from __future__ import annotations

import paddle


class GreedyDecoder(paddle.nn.Layer):
    """Greedy decoding with the model's KV cache in one ``while`` loop (batch of 1).

    ``forward(input_ids int64 [1, L], max_new_tokens int64 [1])`` returns the new
    token ids, int64 [1, n] with ``n <= max_new_tokens``; decoding stops after
    ``eos_token_id`` when one is given. The loop body is written the way PaddleNLP
    code reads a model's outputs (``out[0]``, ``out[1]``), so a dy2static export
    carries the logits and every cache tensor twice: the copy chains the
    ``remove_loop_assign`` pass removes.
    """

    def __init__(self, model, eos_token_id: int | None = None):
        super().__init__()
        self.model = model
        self.eos_token_id = eos_token_id

    def _running(self, step, max_new_tokens, token):
        running = step < max_new_tokens
        if self.eos_token_id is not None:
            # `&` rather than paddle.logical_and: on Paddle 3.3.1 the latter is bound to
            # a PIR-only op and fails while tracing a legacy program.
            running = running & (token[:, 0] != self.eos_token_id)
        return running

    def forward(self, input_ids, max_new_tokens):
        length = paddle.shape(input_ids)[1]
        positions = paddle.arange(length, dtype="int64").unsqueeze(0)
        out = self.model(input_ids, position_ids=positions, use_cache=True, return_dict=False)
        logits, cache = out[0], out[1]
        token = paddle.argmax(logits[:, -1, :], axis=-1, keepdim=True)
        # A copy, not `generated = token`: dy2static would carry both names as one
        # Variable and the loop would return the last token only.
        generated = paddle.assign(token)
        position = paddle.reshape(length, [1, 1]).astype("int64")
        step = paddle.full([1], 1, dtype="int64")
        running = self._running(step, max_new_tokens, token)
        while running:
            out = self.model(token, position_ids=position, past_key_values=cache, use_cache=True, return_dict=False)
            logits, cache = out[0], out[1]
            token = paddle.argmax(logits[:, -1, :], axis=-1, keepdim=True)
            generated = paddle.concat([generated, token], axis=1)
            position = position + 1
            step = step + 1
            running = self._running(step, max_new_tokens, token)
        return generated
