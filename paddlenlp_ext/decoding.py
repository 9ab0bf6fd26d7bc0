"""A batched static-graph generation loop for PaddleNLP causal LMs, and its two exports.

``GenerationLoop`` decodes a left-padded batch with the model's KV cache in one
``while`` loop, greedily or by sampling (top-k, top-p, temperature), and stops each
row at its end-of-sequence token. The decoding settings (top-k, top-p, temperature,
repetition penalty, seed) are inputs, so one export serves every decoding. It is built
from ops that have CPU kernels, and its
sampling draws from a counter-based generator (``counter_uniform``) instead of
Paddle's stateful random ops, so one seed gives the same tokens in dynamic mode and in
both exported programs.

``export_pir`` writes Paddle 3's PIR format (``.json`` + ``.pdiparams``),
``export_legacy`` the ProgramDesc format (``.pdmodel`` + ``.pdiparams``) of Paddle 2.x
and PaddleNLP 2.8 exports; ``inference.load_program`` loads either (translating a
legacy one to PIR, as Paddle 3.x does) and ``run_generation`` runs it.

    loop = GenerationLoop(model, DecodingConfig(eos_token_id=2))
    export_legacy(loop, "out/llama/model")
    sampling = DecodingConfig("sampling", top_p=0.9, eos_token_id=2)
    tokens = run_generation(load_program("out/llama"), input_ids, attention_mask, 32, sampling, seed=1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import paddle
import paddle.nn.functional as F

from .compat import fresh_trace_records, legacy_export_patches, pir_export_patches
from .kv_cache import CACHE_LAYOUTS, StaticCache
from .last_position import last_position_only
from .paddle_modes import dygraph_mode
from .program_files import LoadedProgram, run_program
from .options import CACHES, DECODE_STRATEGIES
from .decoding_settings import SETTING_DTYPES, SETTING_INPUTS, check_settings, settings_feed



@dataclass(frozen=True)
class DecodingConfig:
    """How ``GenerationLoop`` picks tokens.

    ``eos_token_id`` (None: rows never finish early) and ``pad_token_id`` are built into
    the loop. The other fields are the decoding settings a dynamic call of the loop uses
    when it is not given them; an exported loop takes every one as an input
    (``SETTING_INPUTS``), and these are the defaults its directory records
    (``generation_config.json``).

    ``top_k`` = 0 and ``top_p`` = 1.0 switch those filters off; they and ``temperature``
    apply to sampling only. Greedy search is ``top_k`` = 1 at run time (``feed``), as in
    PaddleNLP's export. ``repetition_penalty`` is PaddleNLP's (1.0 = off).
    """

    decode_strategy: str = "greedy_search"
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_id: int | None = None
    pad_token_id: int = 0

    def __post_init__(self):
        if self.decode_strategy not in DECODE_STRATEGIES:
            raise ValueError(f"decode_strategy must be one of {', '.join(DECODE_STRATEGIES)}, got {self.decode_strategy!r}")
        check_settings(self.top_k, self.top_p, self.temperature, self.repetition_penalty)

    def feed(self, seed: int = 0) -> dict:
        """The settings inputs of an exported loop for this decoding, with ``seed``."""
        top_k = 1 if self.decode_strategy == "greedy_search" else self.top_k
        return settings_feed(top_k, self.top_p, self.temperature, self.repetition_penalty, seed)


def generation_inputs() -> list:
    """The exported loop's inputs: the prompt, ``max_new_tokens``, then the decoding
    settings (``SETTING_INPUTS``), with PaddleNLP's names and dtypes."""
    token_inputs = [
        paddle.static.InputSpec([None, None], "int64", "input_ids"),
        paddle.static.InputSpec([None, None], "int64", "attention_mask"),
        paddle.static.InputSpec([1], "int64", "max_new_tokens"),
    ]
    return token_inputs + [paddle.static.InputSpec([1], SETTING_DTYPES[name], name) for name in SETTING_INPUTS]


class DecodingInputs(NamedTuple):
    """The decoding settings inside the loop: [1] tensors (``SETTING_INPUTS``), and the
    sampling's uniform numbers for every row and step, drawn before the loop."""

    seed: paddle.Tensor
    top_k: paddle.Tensor
    top_p: paddle.Tensor
    temperature: paddle.Tensor
    repetition_penalty: paddle.Tensor
    draws: paddle.Tensor | None = None  # float32 [B, max_new_tokens]: counter_uniform(seed, step, row)


class TokenChoice(NamedTuple):
    """What every step's token choice reads that no step changes, built once before the
    loop (``GenerationLoop._token_choice``): ops inside the loop run at every token,
    and the settings are inputs, so each value derived from them alone would otherwise
    be recomputed per token."""

    settings: DecodingInputs
    temperature: paddle.Tensor  # [1], the logits' dtype
    greedy: paddle.Tensor  # int64 [1]: 1 when top_k == 1, else 0
    sampling: paddle.Tensor  # int64 [1]: 1 - greedy
    candidates: paddle.Tensor  # int64 [1]: top_k, or the vocabulary size when top_k is 0 or above it
    keep_all: paddle.Tensor  # bool [1]: top_p >= 1
    ranks: paddle.Tensor  # int64 [1, candidates]: 0, 1, ...
    ranks_plus_one: paddle.Tensor  # int64 [1, candidates]: 1, 2, ...
    zero: paddle.Tensor  # int64 [1]
    sampled_ids: paddle.Tensor  # int64 [W]: the logits _sample reads, the vocabulary's when sampling, else [0]


_UINT32 = 2**32
_EXACT_FLOAT32_INTEGERS = 2**24  # float32 holds every integer up to this one


def _int64(value: int):
    """An int64 [1] constant, 0 <= value <= 2**32, exact in every program format.

    Integer constants are tensors because `x * 3` or `x + 3` on an int64 tensor becomes
    a `scale` op with a float32 factor in static programs. A constant above 2**24 is
    built as high * 2**16 + low: Paddle 3.3.1's ProgramDesc-to-PIR translator (what
    loads a legacy export) reads `fill_constant`'s float32 `value`, not its exact
    `str_value`, and would round it (2146121005 becomes 2146120960).
    """
    if value < _EXACT_FLOAT32_INTEGERS:
        return paddle.full([1], value, dtype="int64")
    high, low = divmod(value, 2**16)
    return (paddle.full([1], high, dtype="int64") * paddle.full([1], 2**16, dtype="int64")
            + paddle.full([1], low, dtype="int64"))


def _mul_uint32(x, constant: int):
    """``(x * constant) mod 2**32`` for 0 <= x, constant < 2**32, without int64 overflow.

    x is split in 16-bit halves so that every product stays below 2**48.
    """
    half = _int64(2**16)
    high, low = x // half, x % half
    c = _int64(constant)
    return (low * c + (high * c) % half * half) % _int64(_UINT32)


def _lowbias32(x):
    """Chris Wellons' ``lowbias32`` integer hash of 32-bit values held in int64."""
    x = paddle.bitwise_xor(x, x // _int64(2**16))
    x = _mul_uint32(x, 0x7FEB352D)
    x = paddle.bitwise_xor(x, x // _int64(2**15))
    x = _mul_uint32(x, 0x846CA68B)
    return paddle.bitwise_xor(x, x // _int64(2**16))


def counter_uniform(seed, step, rows):
    """One float32 in [0, 1) per row, a pure function of (seed, step, row).

    A counter-based generator: the 64-bit seed is folded to 32 bits by hashing its high
    half into its low half, then ``step`` and each row index are mixed in one at a time
    (xor, then the ``lowbias32`` hash), and the top 24 bits of the result become the
    float. It uses integer ops only and keeps no state, so dynamic mode, every static
    program and any rewrite of one draw the same numbers for the same seed; a different
    seed or step gives unrelated numbers.

    seed: int64 [1]; step: int64 [1], or [1, T] for T steps at once; rows: int64 [B, 1]
    (0..B-1). Returns float32 [B, 1], or [B, T].
    """
    uint32 = _int64(_UINT32)
    low = seed % uint32
    high = seed // uint32 % uint32
    state = _lowbias32(paddle.bitwise_xor(low, _lowbias32(high)))
    state = _lowbias32(paddle.bitwise_xor(state, step % uint32))
    state = _lowbias32(paddle.bitwise_xor(state, rows))
    top24 = (state // _int64(2**8)).astype("float32")
    return top24 * paddle.full([1], 2.0**-24, dtype="float32")


class GenerationLoop(paddle.nn.Layer):
    """Greedy or sampled decoding of a left-padded batch, KV cache in one ``while`` loop.

    ``forward(input_ids, attention_mask, max_new_tokens, seed, top_k, top_p, temperature,
    repetition_penalty)``:

    - ``input_ids`` int64 [B, L], left-padded with ``pad_token_id``;
    - ``attention_mask`` int64 [B, L], 0 on the padding;
    - ``max_new_tokens`` int64 [1];
    - the decoding settings, [1] tensors of ``SETTING_DTYPES`` (an export takes them
      all; a dynamic call may leave them to ``config``). ``seed`` is read by sampling
      only.

    Returns the new tokens, int64 [B, n], n <= max_new_tokens: decoding stops when every
    row has produced ``eos_token_id`` (a finished row emits ``pad_token_id`` from then
    on) or after ``max_new_tokens`` tokens.

    Positions count real tokens only (each row's first real token is at position 0),
    and the padding stays masked in the prompt and in every step, as in PaddleNLP's
    ``generate`` given ``position_ids`` and a 2-D ``attention_mask``. The loop body reads
    the model's outputs as PaddleNLP code does (``out[0]``, ``out[1]``), so a legacy
    export carries the logits and every cache tensor through copy chains: what
    ``paddlenlp_ext.remove_loop_assign`` removes.

    ``cache="static"`` keeps the KV cache in buffers of prompt length +
    ``max_new_tokens`` positions per layer, allocated after the prefill; each step
    writes its token's keys and values at one position, in place, and attention reads
    the buffers with the positions not yet written masked
    (``kv_cache.StaticCache``; its patches are entered around every call of the loop and
    by the exports). ``"concat"`` (the default) is PaddleNLP's cache, grown by
    ``paddle.concat`` every step: a copy of the whole cache per token
    (``kv_cache.ConcatCache``).
    """

    def __init__(self, model, config: DecodingConfig, cache: str = "concat"):
        super().__init__()
        if cache not in CACHES:
            raise ValueError(f"cache must be one of {', '.join(CACHES)}, got {cache!r}")
        self.model = model
        self.config = config
        self.cache = cache
        self.cache_layout = CACHE_LAYOUTS[cache]()
        self.vocab_size = model.config.vocab_size

    def __call__(self, *args, **kwargs):
        with self.cache_layout.patches():
            return super().__call__(*args, **kwargs)

    def _token_choice(self, settings: DecodingInputs, logits_dtype) -> TokenChoice:
        """The loop invariants of ``_next_token`` for these settings."""
        vocab = _int64(self.vocab_size)
        zero = _int64(0)
        # where and `&`, not paddle.minimum: it is PIR-only on Paddle 3.3.1 and fails while
        # tracing a legacy program.
        candidates = paddle.where((settings.top_k > zero) & (settings.top_k < vocab), settings.top_k, vocab)
        greedy = (settings.top_k == _int64(1)).astype("int64")
        sampling = _int64(1) - greedy
        ranks = paddle.arange(candidates[0], dtype="int64").unsqueeze(0)
        return TokenChoice(
            settings=settings,
            temperature=settings.temperature.astype(logits_dtype),
            greedy=greedy,
            sampling=sampling,
            candidates=candidates,
            # top_p 1.0 keeps every candidate, even where the float sum of the
            # probabilities before one exceeds 1.
            keep_all=settings.top_p >= paddle.full([1], 1.0),
            ranks=ranks,
            ranks_plus_one=ranks + _int64(1),
            zero=zero,
            sampled_ids=paddle.arange((_int64(1) + (vocab - _int64(1)) * sampling)[0], dtype="int64"),
        )

    def _next_token(self, logits, seen, choice: TokenChoice, step):
        """int64 [B, 1]: the token each row picks from its last-position logits [B, V].

        The repetition penalty comes first, as PaddleNLP's logits processor does; then
        ``top_k`` = 1 is greedy search (the penalized logits' argmax, which temperature
        and rounding in the softmax cannot change), anything else is ``_sample``.
        """
        logits = _penalize(logits, seen > choice.zero, choice.settings.repetition_penalty)
        greedy = paddle.argmax(logits, axis=-1, keepdim=True)
        # Both choices run at every step (no branch in the loop); greedy search samples
        # from the first logit alone, so the sampling path's top-k, softmax and sums over
        # the vocabulary cost next to nothing, and its pick is multiplied by 0.
        sampled = self._sample(paddle.index_select(logits, choice.sampled_ids, axis=1), choice, step)
        # Products with the [1] flags, not paddle.where: with a [1] condition and [B, 1]
        # values a static program broadcasts all three first, about ten ops per step.
        return greedy * choice.greedy + sampled * choice.sampling

    def _sample(self, logits, choice: TokenChoice, step):
        """Inverse-CDF sampling over the candidates sorted by probability.

        The candidates are the ``top_k`` most probable tokens (all of them when
        ``top_k`` is 0); ``top_p`` keeps those whose preceding mass is at most ``top_p``
        (the shortest prefix whose mass exceeds it), on the top-k probabilities without
        renormalising, as PaddleNLP's TopKProcess and TopPProcess do. Sorted, the kept
        candidates are a prefix, and the draw is the first one whose cumulative mass
        exceeds ``u * kept mass`` for the row's ``counter_uniform`` number u.
        """
        # Tensor divisors and bounds throughout: dividing by a Python float becomes a
        # multiplication by its rounded reciprocal in static programs. Dividing by 1.0
        # is exact, so temperature 1 changes nothing.
        probs = F.softmax((logits / choice.temperature).astype("float32"), axis=-1)
        sorted_probs, sorted_ids = paddle.topk(probs, k=choice.candidates, axis=-1)
        cumulative = paddle.cumsum(sorted_probs, axis=-1)
        kept = (cumulative - sorted_probs <= choice.settings.top_p) | choice.keep_all
        sorted_probs = paddle.where(kept, sorted_probs, paddle.zeros_like(sorted_probs))
        cumulative = paddle.cumsum(sorted_probs, axis=-1)
        # Ranks times 0/1 flags rather than paddle.where on [1, k] ranks: see _next_token.
        last_kept = paddle.max(kept.astype("int64") * choice.ranks, axis=-1, keepdim=True)
        threshold = paddle.gather(choice.settings.draws, step, axis=1) * cumulative[:, -1:]
        # The draw is the candidate after the last one at or below the threshold: the
        # largest rank + 1 among those (0 when there is none).
        below = (cumulative <= threshold).astype("int64") * choice.ranks_plus_one
        drawn = paddle.max(below, axis=-1, keepdim=True)
        # u * mass can round up to the mass itself: stay on a kept candidate.
        drawn = paddle.where(drawn > last_kept, last_kept, drawn)
        return paddle.take_along_axis(sorted_ids, drawn, axis=-1, broadcast=False)

    def _finish(self, token, finished):
        """Pad the rows that had finished, then mark the rows that produce eos now."""
        config = self.config
        if config.eos_token_id is None:
            return token, finished
        token = paddle.where(finished, paddle.full_like(token, config.pad_token_id), token)
        # `|` rather than paddle.logical_or: the latter fails while tracing a legacy
        # program on Paddle 3.3.1 (it is bound to a PIR-only op).
        return token, finished | (token == config.eos_token_id)

    def _running(self, step, max_new_tokens, finished):
        # paddle.max of the unfinished flags, not paddle.any: the latter is PIR-only on
        # Paddle 3.3.1 and fails while tracing a legacy program. `&` for the same reason.
        unfinished = paddle.max((~finished).astype("int64")) > 0
        return (step < max_new_tokens) & unfinished

    def forward(self, input_ids, attention_mask, max_new_tokens, seed=None, top_k=None, top_p=None,
                temperature=None, repetition_penalty=None):
        settings = self._settings(seed, top_k, top_p, temperature, repetition_penalty)
        # Every step's draws at once: a step then reads its column instead of hashing.
        steps = paddle.arange(max_new_tokens[0], dtype="int64").unsqueeze(0)
        rows = paddle.arange(paddle.shape(input_ids)[0], dtype="int64").unsqueeze(1)
        settings = settings._replace(draws=counter_uniform(settings.seed, steps, rows))
        if isinstance(self.cache_layout, StaticCache):
            return self._decode_with_static_cache(input_ids, attention_mask, max_new_tokens, settings)
        cache, seen, choice, token, finished, generated, position, step, running = self._prefill(
            input_ids, attention_mask, max_new_tokens, settings)
        while running:
            attention_mask = paddle.concat([attention_mask, paddle.ones_like(token)], axis=1)
            logits, cache = self.model(token, position_ids=position, attention_mask=attention_mask,
                                       past_key_values=cache, use_cache=True, return_dict=False)[:2]
            token = self._next_token(logits[:, -1, :], seen, choice, step)
            token, finished, seen, generated, position, step, running = self._advance(
                token, finished, seen, generated, position, step, max_new_tokens)
        return generated

    def _advance(self, token, finished, seen, generated, position, step, max_new_tokens) -> tuple:
        """The loop's state once a step has chosen ``token``, on either cache: ``(token,
        finished, seen, generated, position, step, running)``."""
        token, finished = self._finish(token, finished)
        seen = _mark_seen(seen, token)
        generated = paddle.concat([generated, token], axis=1)
        position = position + 1
        step = step + 1
        return token, finished, seen, generated, position, step, self._running(step, max_new_tokens, finished)

    def _prefill(self, input_ids, attention_mask, max_new_tokens, settings: DecodingInputs) -> tuple:
        """The prompt's forward pass and the first new token, as both caches start:
        ``(cache, seen, choice, token, finished, generated, position, step, running)``,
        the model's cache of the prompt, then the loop's state after one token.

        Only the ``while`` body stays inline in ``forward`` and
        ``_decode_with_static_cache``: dy2static carries the names it assigns."""
        # Left padding: the first real token of each row is at position 0 (the pads get
        # position 0 too; they are masked out as keys and nothing reads their outputs).
        position_ids = paddle.clip(paddle.cumsum(attention_mask, axis=1) - 1, min=0)
        # Unpacked at once: a name holding the model's whole output would be one more loop
        # variable, carrying the cache a second time (in PIR, one value yielded at two
        # positions, which passes.loop_cache_layout cannot carry permuted).
        with last_position_only(self.model):
            logits, cache = self.model(input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                       use_cache=True, return_dict=False)[:2]
        step = paddle.full([1], 0, dtype="int64")
        seen = self._seen_in_prompt(input_ids)
        choice = self._token_choice(settings, logits.dtype)
        token = self._next_token(logits[:, -1, :], seen, choice, step)
        finished = paddle.zeros_like(token, dtype="bool")
        token, finished = self._finish(token, finished)
        seen = _mark_seen(seen, token)
        # A copy, not `generated = token`: dy2static would carry both names as one
        # Variable and the loop would return the last token only.
        generated = paddle.assign(token)
        position = position_ids[:, -1:] + 1
        step = step + 1
        running = self._running(step, max_new_tokens, finished)
        return cache, seen, choice, token, finished, generated, position, step, running

    def _settings(self, seed, top_k, top_p, temperature, repetition_penalty) -> DecodingInputs:
        """The settings as [1] tensors: those given (an export gives all), else
        ``config``'s; greedy search reads no seed."""
        if seed is None and self.config.decode_strategy == "sampling":
            raise ValueError("sampling needs a seed (int64 [1])")
        given = {"seed": seed, "top_k": top_k, "top_p": top_p, "temperature": temperature,
                 "repetition_penalty": repetition_penalty}
        defaults = self.config.feed()
        return DecodingInputs(**{name: paddle.to_tensor(defaults[name]) if value is None else value
                                 for name, value in given.items()})

    def _seen_in_prompt(self, input_ids):
        """int64 [B, V]: 1 for each token in the row's ids, padding included (the ids
        PaddleNLP's repetition penalty reads)."""
        seen = paddle.zeros([paddle.shape(input_ids)[0], self.vocab_size], dtype="int64")
        return paddle.put_along_axis(seen, input_ids, paddle.ones_like(input_ids), axis=1)

    def _decode_with_static_cache(self, input_ids, attention_mask, max_new_tokens, settings: DecodingInputs):
        """``forward`` with the static cache: the same prefill and token choice; the
        prompt's keys and values are then copied once into the buffers, which the
        steps write into in place."""
        prompt_cache, seen, choice, token, finished, generated, position, step, running = self._prefill(
            input_ids, attention_mask, max_new_tokens, settings)
        cache = self.cache_layout.allocate(self.model.config, prompt_cache, max_new_tokens)
        batch = paddle.shape(input_ids)[0]
        # The mask over the buffers' positions once every new token is written: the
        # prompt's, then ones. Each step keeps its positions up to the one it writes.
        final_mask = paddle.concat([attention_mask, paddle.ones([batch, max_new_tokens[0]], dtype="int64")], axis=1)
        cache_positions = paddle.arange(paddle.shape(final_mask)[1], dtype="int64").unsqueeze(0)
        write_position = paddle.shape(input_ids)[1:2].astype("int64")
        while running:
            token, cache = self._static_cache_step(token, position, cache, write_position,
                                                   final_mask * (cache_positions <= write_position).astype("int64"),
                                                   seen, choice, step)
            token, finished, seen, generated, position, step, running = self._advance(
                token, finished, seen, generated, position, step, max_new_tokens)
            write_position = write_position + 1
        return generated

    def _static_cache_step(self, token, position, cache, write_position, attention_mask, seen,
                           choice: TokenChoice, step):
        """One step on the static cache: the next token and the written buffers.

        A method of its own so that the loop body assigns loop state only: dy2static
        carries every name the body assigns through the loop (those it first assigns
        there too), and in a legacy export a carried model output (``out[1]``) would
        be another variable per buffer, copied from the written buffer every step.
        """
        out = self.model(token, position_ids=position, attention_mask=attention_mask,
                         past_key_values=self.cache_layout.layers(cache, write_position), use_cache=True,
                         return_dict=False)
        return self._next_token(out[0][:, -1, :], seen, choice, step), out[1]


def _penalize(logits, seen, penalty):
    """PaddleNLP's repetition penalty on the logits of the ``seen`` tokens (bool [B, V]):
    negative ones multiplied by ``penalty``, the others divided by it (penalty 1.0
    changes no value)."""
    penalized = paddle.where(logits < paddle.zeros([1], dtype=logits.dtype), logits * penalty, logits / penalty)
    return paddle.where(seen, penalized, logits)


def _mark_seen(seen, token):
    """``seen`` with each row's new token marked."""
    # broadcast=False: token is [B, 1] already, and broadcasting adds eight ops per step.
    return paddle.put_along_axis(seen, token, paddle.ones_like(token), axis=1, broadcast=False)


def _fresh_copy(loop: GenerationLoop) -> GenerationLoop:
    # to_static replaces a layer's forward in place; the caller's loop stays dynamic.
    return GenerationLoop(loop.model, loop.config, cache=loop.cache)


def export_pir(loop: GenerationLoop, prefix: str) -> None:
    """Save ``loop`` in Paddle 3's PIR format: ``prefix``.json and ``prefix``.pdiparams."""
    with paddle.pir_utils.IrGuard(), pir_export_patches(), loop.cache_layout.patches(), dygraph_mode(), \
            fresh_trace_records():
        static = paddle.jit.to_static(_fresh_copy(loop), input_spec=generation_inputs(), full_graph=True)
        paddle.jit.save(static, prefix)


def export_legacy(loop: GenerationLoop, prefix: str) -> None:
    """Save ``loop`` in the ProgramDesc format of Paddle 2.x and PaddleNLP 2.8 exports:
    ``prefix``.pdmodel and ``prefix``.pdiparams (Paddle 3.x translates it to PIR when it
    loads it)."""
    with paddle.pir_utils.OldIrGuard(), legacy_export_patches(), loop.cache_layout.patches(), dygraph_mode(), \
            fresh_trace_records():
        static = paddle.jit.to_static(_fresh_copy(loop), input_spec=generation_inputs(), full_graph=True)
        paddle.jit.save(static, prefix)


def run_generation(loaded: LoadedProgram, input_ids, attention_mask, max_new_tokens: int,
                   decoding: DecodingConfig | None = None, seed: int = 0) -> np.ndarray:
    """The tokens an exported loop generates on the static executor, int64 [B, n], with
    ``decoding``'s settings (greedy search by default) and ``seed``. ``loaded`` comes
    from ``inference.load_program``."""
    inputs = {
        "input_ids": np.asarray(input_ids, dtype="int64"),
        "attention_mask": np.asarray(attention_mask, dtype="int64"),
        "max_new_tokens": np.array([max_new_tokens], dtype="int64"),
        **(decoding or DecodingConfig()).feed(seed),
    }
    (tokens,) = run_program(loaded, inputs)
    return tokens
