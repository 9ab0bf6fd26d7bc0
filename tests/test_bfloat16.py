"""bfloat16 models on CPU: the export (``compat.pir_export_patches`` keeps the ops
without bfloat16 CPU kernels in float32), and the accuracy contract, against the
float32 program on the same weights, teacher-forced.

The contract. bfloat16 keeps 8 significant bits: each weight and each op's result is
rounded with a relative error up to 2**-8 (half its spacing). Over a few layers these
roundings add up to a few units of 2**-8 relative to the values' scale, so a logit may
move by

    TOLERANCE = 8 * 2**-8 * max |float32 logit|          (about 3% of their range)

and two runs can pick different tokens only where float32's two best logits are
within 2 * TOLERANCE of each other. So: every logit within TOLERANCE of float32's;
every token greedy bfloat16 generation picks is, teacher-forced on float32 with the
same prefix, within 2 * TOLERANCE of float32's best logit at that step.
"""

import logging

import numpy as np
import paddle
import pytest
from hardware import requires_bfloat16

from paddlenlp_ext import compat
from paddlenlp_ext.cpu import NO_BFLOAT16, computes_bfloat16, has_avx512_bf16
from paddlenlp_ext.decoding import DecodingConfig
from paddlenlp_ext.export import ExportError, export_generation_model
from paddlenlp_ext.inference import StaticGenerationModel
from paddlenlp_ext.models import load_model
from paddlenlp_ext.paddle_modes import dygraph_mode
from paddlenlp_ext.predictor import model_inputs
from paddlenlp_ext.transposed_weights import transposed_weights

IDS = np.array([[5, 17, 99, 230, 11, 400, 7, 1200], [42, 42, 8, 900, 1500, 3, 64, 77]], dtype="int64")
NEW_TOKENS = 12
# The generation loops a bfloat16 model exports as: ours with either cache, PaddleNLP's
# (``model.to_static``) with its concat cache.
LOOPS = {"concat": ("generation_loop", "concat"), "static": ("generation_loop", "static"),
         "paddlenlp": ("paddlenlp", "concat")}
RELATIVE_TOLERANCE = 8 * 2.0**-8


class Logits(paddle.nn.Layer):
    """A causal LM's logits at every position of ``input_ids``: teacher forcing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids):
        return self.model(input_ids, position_ids=position_ids, use_cache=False, return_dict=False)[0]


def _export_logits(model, directory):
    """As our generation export saves a model: a bfloat16 one's weights transposed."""
    spec = [paddle.static.InputSpec([None, None], "int64", name) for name in ("input_ids", "position_ids")]
    with paddle.pir_utils.IrGuard(), compat.pir_export_patches(), dygraph_mode(), transposed_weights(model):
        static = paddle.jit.to_static(Logits(model), input_spec=spec, full_graph=True)
        paddle.jit.save(static, str(directory / "model"))


@pytest.fixture(scope="module", params=["llama2", "llama2-gqa"])
def exports(request, tmp_path_factory):
    """For float32 and bfloat16 (the float32 weights cast) of an embedded model (llama2-gqa:
    grouped-query attention, whose repeat_kv the export patches): the logits program and
    the generation loops (PIR, the only format a bfloat16 model exports in):
    ``(logits directory, {LOOPS key: loop directory})``, and under "layers" the number
    of decoder layers."""
    if not computes_bfloat16():
        pytest.skip(f"computes in bfloat16: {NO_BFLOAT16}")
    root = tmp_path_factory.mktemp("bfloat16")
    home = root / "home"
    directories = {}
    for dtype in ("float32", "bfloat16"):
        loops = {}
        with dygraph_mode():
            model, tokenizer = load_model(request.param, cache_dir=home, dtype=dtype)
            assert {str(p.dtype) for p in model.parameters()} == {f"paddle.{dtype}"}
            _export_logits(model, root / f"logits-{dtype}")
            decoding = DecodingConfig(eos_token_id=-1, pad_token_id=0)  # no eos: every step generates
            for loop, cache in LOOPS.values():
                loops[cache if loop == "generation_loop" else loop] = root / f"{loop}-{dtype}-{cache}"
                export_generation_model(model, root / f"{loop}-{dtype}-{cache}", decoding=decoding, format="pir",
                                        loop=loop, cache=cache, remove_loop_assign=True)
        directories[dtype] = (root / f"logits-{dtype}", loops)
    directories["layers"] = model.config.num_hidden_layers
    directories["model"] = (request.param, home)  # load_model's name and cache_dir
    return directories


def _logits(directory, ids, onednn="all"):
    positions = np.broadcast_to(np.arange(ids.shape[1], dtype="int64"), ids.shape).copy()
    model = StaticGenerationModel(directory, onednn=onednn, fall_back=False)
    return [model.run({"input_ids": ids, "position_ids": positions}) for _ in range(2)]


def _generate(directory, onednn):
    """Two runs' tokens, and the model (its ``pipeline`` says what ran)."""
    model = StaticGenerationModel(directory, onednn=onednn, fall_back=False)
    inputs = _greedy_inputs()
    return [model.run({name: inputs[name] for name in model.input_names}) for _ in range(2)], model


def _greedy_inputs():
    settings = {"top_k": 1, "top_p": 1.0, "temperature": 1.0, "repetition_penalty": 1.0, "seed": 0}
    return model_inputs(IDS, np.ones_like(IDS), NEW_TOKENS, settings)


@pytest.mark.parametrize("onednn", ["all", "off"])
def test_bfloat16_logits_are_float32s_within_the_tolerance(exports, onednn):
    """The logits come out as float32 (``passes.float32_outputs``: Paddle Inference
    copies a bfloat16 output out wrong)."""
    want = _logits(exports["float32"][0], IDS, onednn)[0]
    tolerance = RELATIVE_TOLERANCE * np.abs(want).max()
    for got in _logits(exports["bfloat16"][0], IDS, onednn):
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.abs(got - want).max() <= tolerance, (np.abs(got - want).max(), tolerance)
        assert not np.array_equal(got, want)  # it did compute in bfloat16


def test_a_converted_bfloat16_program_is_right_on_paddles_default_config(exports, tmp_path):
    """What ``convert`` writes (``saving_passes``: a bfloat16 output fetched as float32)
    run as a user of the directory runs it, Paddle's default CPU config."""
    from onednn_cases import paddle_default_predictor

    from paddlenlp_ext.convert import convert
    from paddlenlp_ext.inference import run_predictor

    want = _logits(exports["float32"][0], IDS)[0]
    convert(exports["bfloat16"][0], tmp_path / "converted")
    predictor = paddle_default_predictor(str(tmp_path / "converted" / "model"))
    positions = np.broadcast_to(np.arange(IDS.shape[1], dtype="int64"), IDS.shape).copy()
    for _ in range(2):
        (got,) = run_predictor(predictor, {"input_ids": IDS, "position_ids": positions})
        assert got.dtype == np.float32
        assert np.abs(got - want).max() <= RELATIVE_TOLERANCE * np.abs(want).max()


def _assert_near_float32s_best(exports, tokens):
    """Teacher-forced on float32 with the bfloat16 run's own sequence: at the position
    before each generated token, that token's logit is within 2 * TOLERANCE of float32's
    best."""
    assert tokens.shape == (len(IDS), NEW_TOKENS)
    sequence = np.concatenate([IDS, tokens], axis=1)
    logits = _logits(exports["float32"][0], sequence)[0]
    tolerance = RELATIVE_TOLERANCE * np.abs(logits).max()
    steps = logits[:, IDS.shape[1] - 1:-1]
    chosen = np.take_along_axis(steps, tokens[..., None], axis=-1)[..., 0]
    shortfall = steps.max(axis=-1) - chosen
    assert shortfall.max() <= 2 * tolerance, (shortfall, tolerance)


def _assert_right_on_paddles_default_config(exports, prefix):
    """Greedy generation by the loop saved at ``prefix``, run twice as a user of the
    directory runs it (Paddle's default CPU config): the same tokens, within the contract."""
    from onednn_cases import paddle_default_predictor

    from paddlenlp_ext.inference import run_predictor

    inputs = _greedy_inputs()
    predictor = paddle_default_predictor(str(prefix))
    names = predictor.get_input_names()
    runs = [run_predictor(predictor, {name: inputs[name] for name in names})[0] for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    _assert_near_float32s_best(exports, runs[0])


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("onednn", ["all", "off"])
def test_greedy_bfloat16_tokens_are_near_float32s_best_teacher_forced(exports, onednn, loop):
    runs, model = _generate(exports["bfloat16"][1][loop], onednn)
    if has_avx512_bf16():  # the decode's weight products ran on our kernel
        gemv = model.pipeline.get("loop_bfloat16_gemv")
        assert gemv.rewritten > 0 and gemv.unavailable is None, gemv.summary()
    np.testing.assert_array_equal(runs[0], runs[1])  # run after run
    _assert_near_float32s_best(exports, runs[0])
    float32 = _generate(exports["float32"][1][loop], onednn)[0][0]
    print(f"greedy tokens equal to float32's ({onednn}, {loop}): {(float32 == runs[0]).mean():.2f}")


def test_the_bfloat16_static_cache_writes_in_place_on_every_route(exports, tmp_path):
    """``put_along_axis_`` has no bfloat16 CPU kernel, so a bfloat16 buffer is written
    by ``set_value_with_tensor_`` (``kv_cache.write_cache_position_``), one position in
    place. Its tokens keep the contract as a user of ``convert``'s directory runs it,
    Paddle's default CPU config (oneDNN placement and fusion, inplace_pass)."""
    from paddlenlp_ext.convert import convert
    from paddlenlp_ext.program_files import count_loop_copies, load_program

    source = exports["bfloat16"][1]["static"]
    loaded = load_program(source)
    (loop,) = [op for op in loaded.program.global_block().ops if op.name() == "pd_op.while"]
    body = [op.name() for op in loop.as_while_op().body().ops]
    assert body.count("pd_op.set_value_with_tensor_") == 2 * exports["layers"]  # a key and a value a layer
    assert "pd_op.set_value_with_tensor" not in body and "pd_op.put_along_axis_" not in body
    assert count_loop_copies(loaded.program) == 0
    convert(source, tmp_path / "converted")
    _assert_right_on_paddles_default_config(exports, tmp_path / "converted" / "model")


def test_a_bfloat16_static_cache_saved_under_the_hook_is_right_on_paddles_default_config(exports, tmp_path,
                                                                                           caplog):
    """The save hook runs ``saving_passes`` where ``paddle.jit.save`` saves: an export
    with our pass turned off, saved while the hook is on, is what Paddle's default CPU
    config runs right, run after run."""
    import paddlenlp_ext

    name, home = exports["model"]
    caplog.set_level(logging.INFO, logger="paddlenlp_ext")
    with dygraph_mode():
        model, _ = load_model(name, cache_dir=home, dtype="bfloat16")
        decoding = DecodingConfig(eos_token_id=-1, pad_token_id=0)
        with paddlenlp_ext.enable():
            export_generation_model(model, tmp_path / "hooked", decoding=decoding, format="pir",
                                    loop="generation_loop", cache="static", remove_loop_assign=False)
    assert any(record.getMessage().startswith("remove_loop_assign on ") for record in caplog.records)  # it ran
    _assert_right_on_paddles_default_config(exports, tmp_path / "hooked" / "model")


@pytest.mark.parametrize("onednn", ["all", "off"])
def test_a_bfloat16_static_cache_keeps_the_contract_on_the_fallback(exports, monkeypatch, onednn):
    """Where the prepared program cannot be built, the untouched program runs on our
    configuration (only the passes that make it safe: ``running_passes(optimize=False)``):
    its loop products on oneDNN's bfloat16 matmul, not our kernel, and its tokens still
    within the contract."""
    from paddlenlp_ext.passes import pipeline

    def broken(program, outputs):
        raise RuntimeError("a pass failed")

    monkeypatch.setattr(pipeline, "LOOP_CACHE_LAYOUT", pipeline.PassStep("loop_cache_layout", broken))
    model = StaticGenerationModel(exports["bfloat16"][1]["static"], onednn=onednn)
    assert model.runtime == f"the untouched program on paddlenlp_ext's configuration (oneDNN {onednn})"
    assert model.pipeline.get("loop_bfloat16_gemv") is None
    inputs = _greedy_inputs()
    runs = [model.run({name: inputs[name] for name in model.input_names}) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    monkeypatch.undo()  # float32's reference logits run on the prepared program
    _assert_near_float32s_best(exports, runs[0])


@pytest.mark.parametrize("loop", ["generation_loop", "paddlenlp"])
def test_a_bfloat16_model_is_refused_the_legacy_format(tmp_path, loop):
    with dygraph_mode():
        model, _ = load_model("llama2", cache_dir=tmp_path / "home", dtype="bfloat16")
        with pytest.raises(ExportError, match="^a bfloat16 model exports in the pir format only"):
            export_generation_model(model, tmp_path / "out", format="legacy", loop=loop, cache="concat")
    assert not (tmp_path / "out").exists()


def test_the_export_transposes_a_bfloat16_models_weights_and_puts_them_back(tmp_path):
    """oneDNN's bfloat16 matmul reads a weight twice as fast stored [out, in]
    (``transposed_weights``); the model is left as it was."""
    from paddlenlp_ext.program_files import load_program
    from paddlenlp_ext.passes.program_index import walk_ops

    with dygraph_mode():
        model, _ = load_model("llama2", cache_dir=tmp_path / "home", dtype="bfloat16")
        before = {name: p.astype("float32").numpy() for name, p in model.named_parameters()}
        export_generation_model(model, tmp_path / "out", cache="concat")
        after = {name: p.astype("float32").numpy() for name, p in model.named_parameters()}
        linears = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.Linear)]
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    loaded = load_program(tmp_path / "out")
    products = [op for op in walk_ops(loaded.program) if op.name() == "pd_op.matmul"
                and op.operand_source(1).get_defining_op().name() == "builtin.parameter"]
    # every linear layer's and the head's product, in the prefill and in the loop
    assert len(products) == 2 * (len(linears) + 1)
    assert all(op.attrs()["transpose_y"] for op in products)


def test_the_transposed_matrices_are_gone_when_the_block_ends(tmp_path):
    """A whole bfloat16 llama2-7B (12.6 GiB) fits in 24 GiB only if the model never holds
    both forms of its weights: a program traced in the block keeps the transposed
    matrices alive through reference cycles, so the block collects them before it puts
    the weights back."""
    import weakref

    from paddlenlp_ext.decoding import GenerationLoop, export_pir

    with dygraph_mode():
        model, _ = load_model("llama2", cache_dir=tmp_path / "home", dtype="bfloat16")
        with transposed_weights(model) as count:
            transposed = [weakref.ref(layer.weight) for layer in model.sublayers()
                          if isinstance(layer, paddle.nn.Linear)]
            assert count == len(transposed) + 1  # and the head
            export_pir(GenerationLoop(model, DecodingConfig(), cache="concat"), str(tmp_path / "model"))
        assert [ref() for ref in transposed] == [None] * len(transposed)


class _BFloat16Loop(paddle.nn.Layer):
    """``x`` times a bfloat16 weight, ``steps`` times, in a while loop, stored [in, out]."""

    def __init__(self):
        super().__init__()
        self.weight = self.create_parameter([32, 32], dtype="float32")
        self.weight.set_value(np.random.default_rng(0).normal(0, 0.2, (32, 32)).astype("float32"))

    def forward(self, x, steps):
        h = x.astype("bfloat16")
        i = paddle.zeros([1], dtype="int64")
        while i < steps:
            h = paddle.matmul(h, self.weight)
            i = i + 1
        return h


@requires_bfloat16
def test_a_bfloat16_loop_product_stays_on_onednn(tmp_path, every_weight_is_large):
    """``addmm`` has no bfloat16 CPU kernel: a bfloat16 loop product is not rewritten to
    it (loop_weight_matmul's condition 6), on a program whose weights are as stored."""
    from paddlenlp_ext.program_files import load_program, run_program

    with dygraph_mode():
        layer = _BFloat16Loop()
        layer.to(dtype="bfloat16")
        spec = [paddle.static.InputSpec([None, 32], "float32", "x"), paddle.static.InputSpec([1], "int64", "steps")]
        with paddle.pir_utils.IrGuard():
            paddle.jit.save(paddle.jit.to_static(layer, input_spec=spec, full_graph=True), str(tmp_path / "model"))
    feed = {"x": np.random.default_rng(1).normal(size=(2, 32)).astype("float32"), "steps": np.array([3])}
    want = run_program(load_program(tmp_path), feed)[0]
    want = (want.astype(np.uint32) << 16).view(np.float32)  # the Executor's bfloat16 bits
    model = StaticGenerationModel(tmp_path, fall_back=False)
    assert not model.pipeline.get("loop_weight_matmul").modified
    assert not model.pipeline.get("loop_bfloat16_gemv").modified  # stored [in, out]
    for _ in range(2):
        np.testing.assert_allclose(model.run(feed), want, rtol=3e-2, atol=3e-2 * np.abs(want).max())
    # Paddle's own defect with oneDNN off, rewritten or not (docs/onednn.md): an error, never a wrong output
    with pytest.raises(RuntimeError, match="could not create a primitive descriptor for a reorder primitive"):
        StaticGenerationModel(tmp_path, onednn="off", fall_back=False).run(feed)
