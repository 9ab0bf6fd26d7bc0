"""GenerationLoop(cache="static"): KV buffers allocated once and written in place, on
the embedded models (llama2, and llama2-gqa with grouped-query attention). The same
greedy tokens as PaddleNLP's dynamic generate and as the concat cache, in dygraph, in
a PIR export and in a legacy export cleaned by remove_loop_assign; the same sampled
tokens for a seed; the write stays in place and no loop copy is left; and the
--cache flag of the predictor and of export_model."""

import contextlib
import json

import numpy as np
import paddle
import pytest
from test_decoding import NEW_TOKENS, PAD, left_padded, paddlenlp_greedy, run_dynamic

import paddlenlp_ext.export_model as export_model_cli
import paddlenlp_ext.predictor as predictor_cli
from paddlenlp_ext.options import CACHES
from paddlenlp_ext import remove_loop_assign
from paddlenlp_ext.kv_cache import CACHE_LAYOUTS, StaticCache, static_cache_attention
from paddlenlp_ext.decoding import DecodingConfig, GenerationLoop, run_generation
from paddlenlp_ext.export import METADATA_FILE, ExportError, export_generation_model
from paddlenlp_ext.inference import StaticGenerationModel, executed_loop_copies
from paddlenlp_ext.program_files import count_loop_copies, load_program, run_program
from paddlenlp_ext.paddle_modes import dygraph_mode

TEXTS = ["The weather today", "My favourite recipe for a quick dinner with friends is"]
GREEDY = DecodingConfig(eos_token_id=2, pad_token_id=PAD)
SAMPLING = DecodingConfig("sampling", top_k=20, top_p=0.9, temperature=0.8, eos_token_id=2, pad_token_id=PAD)
SEED = 11
# The translated legacy loop's copies with the static cache: the generated tokens, the
# token, the tokens seen (the repetition penalty's), the position, the write position,
# the step, the finished flags, and two for the loop condition; none for the buffers,
# whatever the number of layers.
STATIC_LOOP_COPIES = 9


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory):
    """``exports(name, format)``: the static-cache loop exported once each (the
    decoding settings are inputs)."""
    done = {}

    def get(name, fmt):
        key = (name, fmt)
        if key not in done:
            model, tokenizer = models(name)
            directory = tmp_path_factory.mktemp(f"{name}-{fmt}") / "export"
            with dygraph_mode():
                done[key] = export_generation_model(model, directory, tokenizer=tokenizer, decoding=GREEDY,
                                                    format=fmt, remove_loop_assign=False, cache="static")
        return done[key]

    return get


def encode(tokenizer, texts=TEXTS):
    return left_padded([tokenizer(text)["input_ids"] for text in texts])


def feed(ids, mask, new_tokens=NEW_TOKENS, decoding=GREEDY, seed=0):
    return {"input_ids": ids, "attention_mask": mask, "max_new_tokens": np.array([new_tokens], dtype="int64"),
            **decoding.feed(seed)}


@pytest.mark.parametrize("name", ["llama2", "llama2-gqa"])
def test_greedy_tokens_match_paddlenlp_generate_and_the_concat_cache(models, exports, tmp_path, name):
    model, tokenizer = models(name)
    ids, mask = encode(tokenizer)
    assert (mask == 0).any()  # the shorter prompt is left-padded
    reference = paddlenlp_greedy(model, ids, mask, eos_token_id=GREEDY.eos_token_id)
    assert reference.shape == (2, NEW_TOKENS) and (reference != GREEDY.eos_token_id).all()  # every step compared
    np.testing.assert_array_equal(run_dynamic(GenerationLoop(model, GREEDY), ids, mask), reference)
    np.testing.assert_array_equal(run_dynamic(GenerationLoop(model, GREEDY, cache="static"), ids, mask), reference)

    pir = load_program(exports(name, "pir").directory)
    assert count_loop_copies(pir.program) == 0
    for n in (1, 3, NEW_TOKENS):  # the buffers are sized from max_new_tokens at run time
        np.testing.assert_array_equal(run_generation(pir, ids, mask, n), reference[:, :n], err_msg=f"pir {n}")

    dump = tmp_path / "optimized"
    static = StaticGenerationModel(exports(name, "legacy").directory, dump_optimized_to=str(dump))
    assert (static.copies_before, static.report.removed, static.report.kept) == (STATIC_LOOP_COPIES,
                                                                                 STATIC_LOOP_COPIES, ())
    assert executed_loop_copies(str(dump)) == 0
    for n in (1, 3, NEW_TOKENS):
        np.testing.assert_array_equal(static.run(feed(ids, mask, n)), reference[:, :n], err_msg=f"legacy {n}")


def _loop_body_ops(program) -> list:
    (loop,) = [op for op in program.global_block().ops if op.name() == "pd_op.while"]
    return [op.name() for op in loop.as_while_op().body().ops]


@pytest.mark.parametrize("fmt", ["pir", "legacy"])
def test_each_step_writes_one_position_of_every_buffer_in_place(models, exports, fmt):
    """A legacy setitem would be an out-of-place set_value_with_tensor (a copy of the
    whole buffer every step, see kv_cache.write_cache_position_); put_along_axis_ is not."""
    layers = models("llama2-gqa")[0].config.num_hidden_layers
    loaded = load_program(exports("llama2-gqa", fmt).directory)
    body = _loop_body_ops(loaded.program)
    assert body.count("pd_op.put_along_axis_") == 2 * layers
    # One out-of-place put_along_axis: the step's token marked in the [batch, vocab] tokens
    # seen (the repetition penalty's), not a cache buffer.
    assert body.count("pd_op.put_along_axis") == 1
    assert not {"pd_op.set_value_with_tensor", "pd_op.set_value_with_tensor_"} & set(body)
    report = remove_loop_assign(loaded.program, outputs=loaded.outputs)
    assert report.kept == () and count_loop_copies(loaded.program) == 0
    assert _loop_body_ops(loaded.program).count("pd_op.put_along_axis_") == 2 * layers


def _logits_per_step(model, ids, mask, cache: str, steps: int) -> list:
    """Greedy decoding of the left-padded batch by hand, with the loop's caches: the
    last-position logits [B, V] of the prefill and of each step."""
    with dygraph_mode(), paddle.no_grad(), static_cache_attention():
        ids, mask = paddle.to_tensor(ids), paddle.to_tensor(mask)
        positions = paddle.clip(paddle.cumsum(mask, axis=1) - 1, min=0)
        logits, past = model(ids, position_ids=positions, attention_mask=mask, use_cache=True, return_dict=False)
        write_position = paddle.to_tensor([ids.shape[1]], dtype="int64")
        if cache == "static":
            past = StaticCache().allocate(model.config, past, paddle.to_tensor([steps], dtype="int64"))
            final_mask = paddle.concat([mask, paddle.ones([mask.shape[0], steps], dtype="int64")], axis=1)
        found = [logits[:, -1, :].numpy()]
        position = positions[:, -1:] + 1
        for _ in range(steps):
            token = paddle.argmax(logits[:, -1, :], axis=-1, keepdim=True)
            if cache == "static":
                written = (paddle.arange(final_mask.shape[1]) <= write_position).astype("int64")
                step_mask, step_past = final_mask * written, StaticCache().layers(past, write_position)
            else:
                mask = paddle.concat([mask, paddle.ones_like(token)], axis=1)
                step_mask, step_past = mask, past
            logits, past = model(token, position_ids=position, attention_mask=step_mask, past_key_values=step_past,
                                 use_cache=True, return_dict=False)
            found.append(logits[:, -1, :].numpy())
            position, write_position = position + 1, write_position + 1
    return found


@pytest.mark.parametrize("name", ["llama2", "llama2-gqa"])
def test_static_cache_logits_are_the_concat_caches_to_float_rounding(models, name):
    model, tokenizer = models(name)
    ids, mask = encode(tokenizer)
    concat = _logits_per_step(model, ids, mask, "concat", NEW_TOKENS)
    static = _logits_per_step(model, ids, mask, "static", NEW_TOKENS)
    np.testing.assert_array_equal(static[0], concat[0])  # the prefill is PaddleNLP's in both
    difference = max(float(np.abs(s - c).max()) for s, c in zip(static, concat))
    scale = max(float(np.abs(c).max()) for c in concat)
    assert difference <= 1e-5 * scale, (difference, scale)


def test_sampling_with_a_seed_gives_the_concat_caches_tokens(models, exports):
    model, tokenizer = models("llama2")
    ids, mask = encode(tokenizer)
    concat = run_dynamic(GenerationLoop(model, SAMPLING), ids, mask, seed=SEED)
    assert not np.array_equal(concat, run_dynamic(GenerationLoop(model, SAMPLING), ids, mask, seed=SEED + 1))
    np.testing.assert_array_equal(run_dynamic(GenerationLoop(model, SAMPLING, cache="static"), ids, mask, seed=SEED),
                                  concat)
    static = StaticGenerationModel(exports("llama2", "legacy").directory)
    np.testing.assert_array_equal(static.run(feed(ids, mask, decoding=SAMPLING, seed=SEED)), concat)


def test_the_attention_patch_is_scoped(models):
    from paddlenlp.transformers.llama.modeling import LlamaAttention

    original = LlamaAttention.forward
    with static_cache_attention():
        assert LlamaAttention.forward is not original
        with static_cache_attention():
            pass
        assert LlamaAttention.forward is not original
    assert LlamaAttention.forward is original
    model, tokenizer = models("llama2")
    run_dynamic(GenerationLoop(model, GREEDY, cache="static"), *encode(tokenizer), new_tokens=2)
    assert LlamaAttention.forward is original


def test_every_cache_option_has_its_layout():
    assert tuple(CACHE_LAYOUTS) == CACHES


def test_bad_cache_values_are_errors(models, tmp_path):
    model, _ = models("llama2")
    with pytest.raises(ValueError, match="cache must be one of concat, static, got 'ring'"):
        GenerationLoop(model, GREEDY, cache="ring")
    with pytest.raises(ExportError, match="cache must be one of concat, static, got 'ring'"):
        export_generation_model(model, tmp_path / "out", cache="ring")
    with pytest.raises(ExportError, match="PaddleNLP's own loop keeps its concat cache"):
        export_generation_model(model, tmp_path / "out", cache="static", loop="paddlenlp")
    assert list(tmp_path.iterdir()) == []


def test_export_model_cache_flag_writes_a_static_cache_model(home, monkeypatch, models, tmp_path, capsys):
    monkeypatch.setenv("PADDLENLP_EXT_HOME", str(home))
    directory = tmp_path / "llama2-static"
    assert export_model_cli.main(["--model", "llama2", "--output_path", str(directory), "--export_format", "legacy",
                                  "--decode_strategy", "greedy_search", "--cache", "static"]) == 0
    metadata = json.loads((directory / METADATA_FILE).read_text())
    assert (metadata["cache"], metadata["loop"], metadata["format"]) == ("static", "generation_loop", "legacy")
    model, tokenizer = models("llama2")
    ids, mask = encode(tokenizer)
    static = StaticGenerationModel(directory)
    assert static.copies_before == STATIC_LOOP_COPIES
    np.testing.assert_array_equal(static.run(feed(ids, mask)),
                                  paddlenlp_greedy(model, ids, mask, eos_token_id=GREEDY.eos_token_id))
    capsys.readouterr()
    # Writing the directory is what a bad flag prevents: these fail before any export.
    for args, message in (
            (["--cache", "ring"], "--cache must be one of concat, static, got 'ring'"),
            (["--cache", "static", "--loop", "paddlenlp"],
             "--cache static needs --loop generation_loop: PaddleNLP's own loop keeps its concat cache")):
        assert export_model_cli.main(["--model", "llama2", "--output_path", str(tmp_path / "bad"), *args]) == 2
        assert capsys.readouterr().err.strip().splitlines() == ["error: " + message]
        assert not (tmp_path / "bad").exists()


def test_predictor_cache_flag_errors_are_one_line(home, monkeypatch, tmp_path, capsys):
    """Bad uses of --cache. Its values' tokens (static, the default, and concat, each
    against dynamic mode) are test_predictor.test_greedy_outputs_are_identical_in_every_mode's."""
    monkeypatch.setenv("PADDLENLP_EXT_HOME", str(home))
    static_dir = tmp_path / "static-dir"
    (static_dir).mkdir()
    (static_dir / "model.pdmodel").write_bytes(b"")
    for args, message in (
            (["--cache", "ring"], "--cache must be one of concat, static, got 'ring'"),
            (["--cache", "static", "--mode", "dynamic"],
             "--cache static is the static loop's: use --mode static (--mode dynamic runs PaddleNLP's generate)"),
            (["--cache", "static", "--mode", "static", "--model_name_or_path", str(static_dir)],
             f"--cache static: {static_dir} is a static model directory, whose cache was chosen when it was "
             "exported")):
        output = tmp_path / "bad.json"
        assert predictor_cli.main(["--output_file", str(output), *args]) == 2
        assert capsys.readouterr().err.strip().splitlines() == ["error: " + message]
        assert not output.exists()


class _SetitemLoop(paddle.nn.Layer):
    """A loop that writes one position of a buffer per step with a slice assignment."""

    def __init__(self):
        super().__init__()
        self.scale = self.create_parameter([1], default_initializer=paddle.nn.initializer.Constant(2.0))

    def forward(self, x, n):
        buffer = paddle.concat([x, paddle.zeros_like(x)], axis=1)
        position = paddle.shape(x)[1:2].astype("int64")
        step = paddle.full([1], 0, dtype="int64")
        while step < n:
            buffer[:, position:position + 1] = x[:, :1] * self.scale
            position = position + 1
            step = step + 1
        return buffer


def test_a_legacy_slice_assignment_would_copy_the_whole_buffer_every_step(tmp_path):
    """Why kv_cache.write_cache_position_ is a put_along_axis: dy2static traces a legacy
    setitem into a new variable, which the translator makes the out-of-place
    set_value_with_tensor; PIR's setitem is the in-place set_value_with_tensor_."""
    from paddlenlp_ext.compat import fresh_trace_records, legacy_export_patches

    specs = [paddle.static.InputSpec([None, None], "float32", "x"), paddle.static.InputSpec([1], "int64", "n")]
    for program_format, ir_guard, patches, write in (
            ("legacy", paddle.pir_utils.OldIrGuard, legacy_export_patches, "pd_op.set_value_with_tensor"),
            ("pir", paddle.pir_utils.IrGuard, contextlib.nullcontext, "pd_op.set_value_with_tensor_")):
        with ir_guard(), patches(), dygraph_mode(), fresh_trace_records():
            paddle.jit.save(paddle.jit.to_static(_SetitemLoop(), input_spec=specs, full_graph=True),
                            str(tmp_path / program_format / "model"))
        loaded = load_program(tmp_path / program_format)
        assert write in _loop_body_ops(loaded.program)
        x = np.arange(6, dtype="float32").reshape(2, 3)
        (written,) = run_program(loaded, {"x": x, "n": np.array([2])})
        np.testing.assert_array_equal(written[:, 3:5], np.repeat(x[:, :1] * 2, 2, axis=1))


def test_the_static_cache_is_the_default_where_the_attention_allows_it(models, tmp_path, monkeypatch):
    from paddlenlp.transformers.llama.modeling import LlamaAttention

    from paddlenlp_ext.kv_cache import supports_static_cache
    from paddlenlp_ext.export import default_cache

    model, _ = models("llama2")
    assert supports_static_cache(model) and default_cache(model, "generation_loop") == "static"
    assert default_cache(model, "paddlenlp") == "concat"  # PaddleNLP's loop has its concat cache only
    export_generation_model(model, tmp_path / "default", format="legacy")
    assert json.loads((tmp_path / "default" / METADATA_FILE).read_text())["cache"] == "static"
    # one attention the static cache does not cover (fused qkv) is enough for concat
    attention = [layer for layer in model.sublayers() if isinstance(layer, LlamaAttention)]
    monkeypatch.setattr(attention[-1], "fuse_attention_qkv", True)
    assert not supports_static_cache(model) and default_cache(model, "generation_loop") == "concat"
    with pytest.raises(ExportError, match="cache 'static' covers PaddleNLP's plain llama attention only"):
        export_generation_model(model, tmp_path / "fused", cache="static")
    assert not (tmp_path / "fused").exists()
