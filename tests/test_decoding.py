"""GenerationLoop: batched greedy and sampled decoding of a PaddleNLP llama, the same
tokens in dynamic mode, in its PIR export and in its legacy export (translated to PIR
at load time), and the loop copies of each format before and after the pass."""

from dataclasses import dataclass

import numpy as np
import paddle
import pytest
from loop_programs import count_loop_copies

from paddlenlp_ext import analyze_loop_assign, remove_loop_assign
from paddlenlp_ext.compat import pir_export_patches
from paddlenlp_ext.decoding import DecodingConfig, GenerationLoop, counter_uniform, export_legacy, export_pir, run_generation
from paddlenlp_ext.paddle_modes import dygraph_mode
from paddlenlp_ext.program_files import load_program

PAD = 0
# Two prompts of different lengths, the shorter one left-padded.
PROMPTS = [[1, 17, 45], [1, 17, 45, 300, 999, 5]]
NEW_TOKENS = 8
SEED = 7

GREEDY = DecodingConfig(eos_token_id=2, pad_token_id=PAD)
SAMPLING = DecodingConfig("sampling", top_k=50, top_p=0.9, temperature=0.7, eos_token_id=2, pad_token_id=PAD)


def llama(layers=2, key_value_heads=None):
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    with dygraph_mode():
        paddle.seed(0)
        config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=key_value_heads or 4,
                             max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
                             pad_token_id=PAD)
        model = LlamaForCausalLM(config)
        model.eval()
    return model


MODELS = {"tiny": lambda: llama(), "gqa": lambda: llama(layers=3, key_value_heads=2)}


def left_padded(prompts):
    length = max(len(p) for p in prompts)
    ids = np.array([[PAD] * (length - len(p)) + p for p in prompts], dtype="int64")
    mask = np.array([[0] * (length - len(p)) + [1] * len(p) for p in prompts], dtype="int64")
    return ids, mask


BATCHES = {"batch2": left_padded(PROMPTS), "batch1": left_padded(PROMPTS[:1])}


def run_dynamic(loop, ids, mask, new_tokens=NEW_TOKENS, seed=None):
    with dygraph_mode():
        seed = None if seed is None else paddle.to_tensor([seed], dtype="int64")
        tokens = loop(paddle.to_tensor(ids), paddle.to_tensor(mask), paddle.to_tensor([new_tokens], dtype="int64"),
                      seed)
        return tokens.numpy()


def paddlenlp_greedy(model, ids, mask, eos_token_id=None, repetition_penalty=1.0):
    """PaddleNLP's own dynamic generate(). Given position ids that start at 0 at each
    row's first real token, it extends them by one per step, as the loop does; without
    them it would count the padding as positions."""
    with dygraph_mode():
        mask = paddle.to_tensor(mask)
        positions = paddle.clip(paddle.cumsum(mask, axis=1) - 1, min=0)
        out, _ = model.generate(paddle.to_tensor(ids), attention_mask=mask, position_ids=positions,
                                max_new_tokens=NEW_TOKENS, decode_strategy="greedy_search",
                                eos_token_id=eos_token_id, pad_token_id=PAD,
                                repetition_penalty=repetition_penalty)
        return out.numpy()


@dataclass
class Exported:
    loop: GenerationLoop
    pir: str  # model directories
    legacy: str

    def load(self, program_format):
        return load_program(self.pir if program_format == "pir" else self.legacy)


@pytest.fixture(scope="module")
def models():
    built = {}

    def get(name):
        if name not in built:
            built[name] = MODELS[name]()
        return built[name]

    return get


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """``exported(model name, eos_token_id)``: the greedy loop, exported once in each
    format (the decoding settings are run-time inputs: one export serves them all)."""
    done = {}

    def get(name, eos_token_id=GREEDY.eos_token_id):
        if (name, eos_token_id) not in done:
            loop = GenerationLoop(models(name), DecodingConfig(eos_token_id=eos_token_id, pad_token_id=PAD))
            root = tmp_path_factory.mktemp(name)
            export_pir(loop, str(root / "pir" / "model"))
            export_legacy(loop, str(root / "legacy" / "model"))
            done[name, eos_token_id] = Exported(loop, str(root / "pir"), str(root / "legacy"))
        return done[name, eos_token_id]

    return get


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_greedy_tokens_match_paddlenlp_generate_in_every_format(exported, models, name, batch):
    ids, mask = BATCHES[batch]
    reference = paddlenlp_greedy(models(name), ids, mask, eos_token_id=GREEDY.eos_token_id)
    # No row meets eos, so the comparison covers every step of every row.
    assert reference.shape == (len(ids), NEW_TOKENS) and (reference != GREEDY.eos_token_id).all()
    export = exported(name)
    np.testing.assert_array_equal(run_dynamic(export.loop, ids, mask), reference)
    for program_format in ("pir", "legacy"):
        tokens = run_generation(export.load(program_format), ids, mask, NEW_TOKENS)
        np.testing.assert_array_equal(tokens, reference, err_msg=program_format)


@pytest.mark.parametrize("name", MODELS)
def test_left_padding_leaves_each_rows_tokens_as_alone(models, name):
    loop = GenerationLoop(models(name), GREEDY)
    ids, mask = BATCHES["batch2"]
    together = run_dynamic(loop, ids, mask)
    for row, prompt in enumerate(PROMPTS):
        alone = run_dynamic(loop, *left_padded([prompt]))
        np.testing.assert_array_equal(together[row:row + 1], alone)


def test_max_new_tokens_is_a_runtime_input(exported):
    export = exported("tiny")
    ids, mask = BATCHES["batch2"]
    full = run_dynamic(export.loop, ids, mask)
    for program_format in ("pir", "legacy"):
        model = export.load(program_format)
        for n in (1, 3):
            np.testing.assert_array_equal(run_generation(model, ids, mask, n), full[:, :n], err_msg=program_format)


def test_sampling_gives_the_same_tokens_for_a_seed_in_every_format(exported):
    export = exported("tiny")
    sampling = GenerationLoop(export.loop.model, SAMPLING)
    ids, mask = BATCHES["batch2"]
    tokens = run_dynamic(sampling, ids, mask, seed=SEED)
    assert tokens.shape == (2, NEW_TOKENS)
    other_seed = run_dynamic(sampling, ids, mask, seed=SEED + 1)
    assert (tokens != other_seed).any()
    greedy = run_dynamic(export.loop, ids, mask)
    assert (tokens != greedy).any()
    for program_format in ("pir", "legacy"):
        model = export.load(program_format)
        np.testing.assert_array_equal(run_generation(model, ids, mask, NEW_TOKENS, SAMPLING, seed=SEED), tokens,
                                      err_msg=program_format)
        np.testing.assert_array_equal(run_generation(model, ids, mask, NEW_TOKENS, SAMPLING, seed=SEED + 1),
                                      other_seed, err_msg=program_format)


# Prompts whose greedy continuation repeats one of their tokens (this tiny llama follows
# 534 with 100), so that a repetition penalty above 1 changes the tokens, as one below
# 1 does.
PENALTY_PROMPTS = left_padded([[1, 17, 45, 100, 534], [1, 17, 45, 300, 999, 100, 534]])
# Decodings one export must reproduce at run time, each with tokens of its own.
DECODINGS = {
    "greedy": GREEDY,
    "greedy-penalty": DecodingConfig(repetition_penalty=2.0, eos_token_id=2, pad_token_id=PAD),
    "top-k-top-p": SAMPLING,
    "full-vocabulary-hot": DecodingConfig("sampling", temperature=1.3, eos_token_id=2, pad_token_id=PAD),
    "top-k-penalty": DecodingConfig("sampling", top_k=3, temperature=0.5, repetition_penalty=1.3, eos_token_id=2,
                                    pad_token_id=PAD),
}


def test_one_export_serves_every_decoding_with_the_tokens_of_dynamic_mode(exported):
    export = exported("tiny")
    ids, mask = PENALTY_PROMPTS
    expected = {name: run_dynamic(GenerationLoop(export.loop.model, config), ids, mask, seed=SEED)
                for name, config in DECODINGS.items()}
    assert len({tokens.tobytes() for tokens in expected.values()}) == len(DECODINGS)
    for program_format in ("pir", "legacy"):
        model = export.load(program_format)
        for name, config in DECODINGS.items():
            np.testing.assert_array_equal(run_generation(model, ids, mask, NEW_TOKENS, config, seed=SEED),
                                          expected[name], err_msg=f"{program_format} {name}")


@pytest.mark.parametrize("penalty", [0.5, 2.0])
def test_greedy_repetition_penalty_matches_paddlenlp_generate(exported, models, penalty):
    ids, mask = PENALTY_PROMPTS
    reference = paddlenlp_greedy(models("tiny"), ids, mask, eos_token_id=GREEDY.eos_token_id,
                                 repetition_penalty=penalty)
    assert (reference != paddlenlp_greedy(models("tiny"), ids, mask, eos_token_id=GREEDY.eos_token_id)).any()
    config = DecodingConfig(repetition_penalty=penalty, eos_token_id=GREEDY.eos_token_id, pad_token_id=PAD)
    np.testing.assert_array_equal(run_generation(exported("tiny").load("legacy"), ids, mask, NEW_TOKENS, config),
                                  reference)


@pytest.mark.parametrize("name", MODELS)
def test_sampling_with_top_k_1_is_greedy_search(models, name):
    ids, mask = BATCHES["batch2"]
    greedy = run_dynamic(GenerationLoop(models(name), GREEDY), ids, mask)
    top_1 = DecodingConfig("sampling", top_k=1, temperature=0.5, eos_token_id=2, pad_token_id=PAD)
    for seed in (1, 2):
        np.testing.assert_array_equal(run_dynamic(GenerationLoop(models(name), top_1), ids, mask, seed=seed), greedy)


def test_sampling_draws_only_tokens_inside_top_k(models):
    ids, mask = BATCHES["batch2"]
    model = models("tiny")
    with dygraph_mode():
        positions = paddle.clip(paddle.cumsum(paddle.to_tensor(mask), axis=1) - 1, min=0)
        logits = model(paddle.to_tensor(ids), position_ids=positions, attention_mask=paddle.to_tensor(mask),
                       return_dict=False)[0][:, -1, :]
        top_3 = paddle.topk(logits, k=3)[1].numpy()
    loop = GenerationLoop(model, DecodingConfig("sampling", top_k=3, pad_token_id=PAD))
    first = np.concatenate([run_dynamic(loop, ids, mask, new_tokens=1, seed=seed) for seed in range(20)], axis=1)
    for row in range(2):
        assert set(first[row]) <= set(top_3[row]) and len(set(first[row])) > 1


def test_eos_stops_each_row_and_pads_it(exported, models):
    ids, mask = BATCHES["batch2"]
    greedy = run_dynamic(GenerationLoop(models("tiny"), GREEDY), ids, mask)
    # A token both rows produce, at different steps: each row stops on its own.
    common = [t for t in greedy[1] if t in greedy[0]]
    assert common, "the tiny llama's greedy rows share no token to use as eos"
    eos = int(common[0])
    stops = [int(np.argmax(row == eos)) for row in greedy]
    assert stops[0] != stops[1]
    length = max(stops) + 1
    expected = greedy[:, :length].copy()
    for row, stop in enumerate(stops):
        expected[row, stop + 1:] = PAD
    export = exported("tiny", eos_token_id=eos)
    np.testing.assert_array_equal(run_dynamic(export.loop, ids, mask), expected)
    np.testing.assert_array_equal(paddlenlp_greedy(models("tiny"), ids, mask, eos_token_id=eos), expected)
    for program_format in ("pir", "legacy"):
        tokens = run_generation(export.load(program_format), ids, mask, NEW_TOKENS)
        np.testing.assert_array_equal(tokens, expected, err_msg=program_format)


# Loop copies of the translated legacy loop: one each for the generated tokens, the last
# token, the tokens seen (the repetition penalty's), the mask, the positions, the step
# and the finished flags, two for the loop condition, and two (the `out[...]` chains)
# for the logits and each cache tensor: 9 + 2 + 2 * 2 * layers. The pass removes every
# one. The PIR export has none.
LEGACY_LOOP_COPIES = {"tiny": 14, "gqa": 16}


@pytest.mark.parametrize("name, config", [("tiny", GREEDY), ("gqa", GREEDY), ("tiny", SAMPLING)],
                         ids=["tiny-greedy", "gqa-greedy", "tiny-sampling"])
def test_pass_removes_every_copy_of_the_legacy_loop_and_keeps_the_tokens(exported, name, config):
    export = exported(name)
    ids, mask = BATCHES["batch2"]
    model = export.load("legacy")
    tokens = run_generation(model, ids, mask, NEW_TOKENS, config, seed=SEED)
    assert count_loop_copies(model.program) == LEGACY_LOOP_COPIES[name]
    report = remove_loop_assign(model.program, outputs=model.outputs)
    assert report.removed == LEGACY_LOOP_COPIES[name] and report.kept == () and report.loops == 1
    assert count_loop_copies(model.program) == 0
    assert analyze_loop_assign(model.program, outputs=model.outputs).removable == ()
    np.testing.assert_array_equal(run_generation(model, ids, mask, NEW_TOKENS, config, seed=SEED), tokens)


@pytest.mark.parametrize("name", MODELS)
def test_pir_export_loop_has_no_copies(exported, name):
    export = exported(name)
    ids, mask = BATCHES["batch2"]
    model = export.load("pir")
    tokens = run_generation(model, ids, mask, NEW_TOKENS)
    assert count_loop_copies(model.program) == 0
    report = remove_loop_assign(model.program, outputs=model.outputs)
    assert report.removed == 0 and report.loops == 1
    np.testing.assert_array_equal(run_generation(model, ids, mask, NEW_TOKENS), tokens)


def test_counter_uniform_is_a_function_of_seed_step_and_row():
    def draw(seed, step, rows=4):
        with dygraph_mode():
            return counter_uniform(paddle.to_tensor([seed], dtype="int64"), paddle.to_tensor([step], dtype="int64"),
                                   paddle.arange(rows, dtype="int64").unsqueeze(1)).numpy().ravel()

    first = draw(7, 0)
    np.testing.assert_array_equal(draw(7, 0), first)
    assert len(set(first)) == 4  # rows differ
    assert not np.array_equal(draw(7, 1), first) and not np.array_equal(draw(8, 0), first)
    assert not np.array_equal(draw(-7, 0), first) and not np.array_equal(draw(7 + 2**32, 0), first)
    many = draw(123, 5, rows=4096)
    assert many.min() >= 0.0 and many.max() < 1.0
    assert abs(many.mean() - 0.5) < 0.02 and abs((many < 0.25).mean() - 0.25) < 0.03


def test_counter_uniform_is_the_same_in_a_translated_legacy_program():
    feed = {"seed": np.array([2**40 + 12345], "int64"), "step": np.array([3], "int64"),
            "rows": np.arange(3, dtype="int64")[:, None]}
    with dygraph_mode():
        expected = counter_uniform(*(paddle.to_tensor(a) for a in feed.values())).numpy()
    with paddle.pir_utils.OldIrGuard():
        main = paddle.static.Program()
        with paddle.static.program_guard(main, paddle.static.Program()):
            name = counter_uniform(*(paddle.static.data(n, a.shape, "int64") for n, a in feed.items())).name
        program, values = paddle.pir.translate_to_pir_with_param_map(main.desc)
    (drawn,) = paddle.static.Executor(paddle.CPUPlace()).run(program, feed=feed, fetch_list=[values[name][-1]])
    np.testing.assert_array_equal(drawn, expected)


def test_translator_rounds_large_int64_constants():
    """Why counter_uniform builds its large constants from 16-bit halves: on Paddle
    3.3.1, translating a legacy `fill_constant` to PIR reads its float32 value."""
    with paddle.pir_utils.OldIrGuard():
        main = paddle.static.Program()
        with paddle.static.program_guard(main, paddle.static.Program()):
            name = paddle.full([1], 2146121005, dtype="int64").name
        program, values = paddle.pir.translate_to_pir_with_param_map(main.desc)
    (value,) = paddle.static.Executor(paddle.CPUPlace()).run(program, fetch_list=[values[name][-1]])
    assert value[0] == 2146120960


def test_decoding_config_rejects_bad_values(models):
    for bad in ({"decode_strategy": "beam_search"}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5},
                {"temperature": 0.0}, {"temperature": -1.0}, {"repetition_penalty": 0.0}):
        with pytest.raises(ValueError):
            DecodingConfig(**bad)
    with dygraph_mode(), pytest.raises(ValueError, match="seed"):
        GenerationLoop(models("tiny"), SAMPLING)(*(paddle.to_tensor(a) for a in BATCHES["batch1"]),
                                           paddle.to_tensor([1], dtype="int64"))


def llama_attention_program(model):
    """PaddleNLP's llama attention alone, through to_static in PIR mode (dynamic shapes)."""
    import paddlenlp.transformers.llama.modeling as llama_modeling

    config = model.config

    def attention(query, key, value, mask):
        return llama_modeling.scaled_dot_product_attention(query, config, key, value, mask, False)

    specs = [paddle.static.InputSpec([None, None, 4, 16], "float32") for _ in range(3)]
    specs.append(paddle.static.InputSpec([None, 1, None, None], "float32"))
    with dygraph_mode():
        return paddle.jit.to_static(attention, input_spec=specs, full_graph=True).concrete_program


def test_pir_export_needs_the_attention_patch(models):
    model = models("tiny")
    with pytest.raises(TypeError, match=r"bool\(Tensor\) is not supported in static graph mode"):
        llama_attention_program(model)
    with pir_export_patches():
        program = llama_attention_program(model)
    assert any(op.name() == "pd_op.softmax" for op in program.main_program.global_block().ops)


def test_attention_patch_keeps_the_attention_values(models):
    import paddlenlp.transformers.llama.modeling as llama_modeling

    config = models("tiny").config
    rng = np.random.default_rng(0)
    query, key, value = (rng.standard_normal((2, 3, 4, 16)).astype("float32") for _ in range(3))
    mask = np.where(np.tril(np.ones((3, 3))) > 0, 0.0, -1e9).astype("float32")[None, None].repeat(2, axis=0)
    feed = {"query": query, "key": key, "value": value, "mask": mask}

    def attention(query, key, value, mask):
        return llama_modeling.scaled_dot_product_attention(query, config, key, value, mask, False)

    with dygraph_mode():
        expected = attention(*(paddle.to_tensor(a) for a in feed.values())).numpy()
    original = llama_modeling.scaled_dot_product_attention
    with pir_export_patches():
        assert llama_modeling.scaled_dot_product_attention is not original
        main = paddle.static.Program()
        with paddle.static.program_guard(main, paddle.static.Program()):
            out = attention(*(paddle.static.data(name, a.shape, "float32") for name, a in feed.items()))
    assert llama_modeling.scaled_dot_product_attention is original
    (got,) = paddle.static.Executor(paddle.CPUPlace()).run(main, feed=feed, fetch_list=[out])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
