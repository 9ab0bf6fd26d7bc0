"""export_generation_model: the embedded models exported in both formats, the pass at
export (PIR) or at load (legacy), and the same tokens everywhere on Paddle Inference."""

import json

import numpy as np
import pytest
from paddlenlp.generation import GenerationConfig
from test_decoding import left_padded, paddlenlp_greedy

from paddlenlp_ext.decoding import DecodingConfig
from paddlenlp_ext.decoding_settings import SETTING_INPUTS
from paddlenlp_ext.export import METADATA_FILE, ExportError, export_generation_model
from paddlenlp_ext.inference import StaticGenerationModel, executed_loop_copies, executed_loop_ops
from paddlenlp_ext.native import load_float32_gemv
from paddlenlp_ext.paddle_modes import dygraph_mode
from paddlenlp_ext.passes import pipeline

TEXTS = ["The weather today", "My favourite recipe for a quick dinner with friends is"]
NEW_TOKENS = 8
SAMPLING = DecodingConfig("sampling", top_k=20, top_p=0.9, temperature=0.8, eos_token_id=2, pad_token_id=0)


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory):
    """``exports(name, format, clean_at_export)``: exported once each (the decoding
    settings are inputs)."""
    done = {}

    def get(name, fmt, clean=False):
        key = (name, fmt, clean)
        if key not in done:
            model, tokenizer = models(name)
            directory = tmp_path_factory.mktemp(f"{name}-{fmt}") / "export"
            with dygraph_mode():
                done[key] = export_generation_model(model, directory, tokenizer=tokenizer, format=fmt,
                                                    remove_loop_assign=clean)
        return done[key]

    return get


def encode(tokenizer, texts):
    return left_padded([tokenizer(text)["input_ids"] for text in texts])


def feed(ids, mask, decoding=None, seed=0):
    """The loop's inputs: the prompt, NEW_TOKENS and ``decoding``'s settings (greedy)."""
    return {"input_ids": ids, "attention_mask": mask, "max_new_tokens": np.array([NEW_TOKENS], dtype="int64"),
            **(decoding or DecodingConfig()).feed(seed)}


# (format, pass at export, pass at load): the four static variants of the issue
VARIANTS = {"pir": ("pir", False, False), "pir+pass": ("pir", True, False),
            "legacy": ("legacy", False, False), "legacy+pass": ("legacy", False, True)}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", ["llama2", "llama2-gqa"])
def test_greedy_tokens_are_identical_in_every_variant(models, exports, tmp_path, name, batch, every_weight_is_large):
    model, tokenizer = models(name)
    ids, mask = encode(tokenizer, TEXTS[:batch])
    reference = paddlenlp_greedy(model, ids, mask, eos_token_id=tokenizer.eos_token_id)
    assert reference.shape == (batch, NEW_TOKENS)
    for variant, (fmt, at_export, at_load) in VARIANTS.items():
        exported = exports(name, fmt, at_export)
        dump = tmp_path / variant
        static = StaticGenerationModel(exported.directory, remove_loop_assign=at_load, dump_optimized_to=str(dump))
        np.testing.assert_array_equal(static.run(feed(ids, mask)), reference, err_msg=variant)
        executed = executed_loop_copies(str(dump))
        # Each decode step's weight products run on the plain GEMM (passes.loop_weight_matmul)
        # or on AMD processors on our kernel (passes.loop_float32_gemv): q, k, v, o, gate, up
        # and down in every layer, and the lm_head.
        products = executed_loop_ops(str(dump))
        on_kernel = products["paddlenlp_ext_float32_gemv"]
        assert products["addmm"] + on_kernel == 7 * model.config.num_hidden_layers + 1, variant
        assert bool(on_kernel) == (pipeline.float32_gemv_pays() and load_float32_gemv()[0] is not None), variant
        if fmt == "legacy":
            assert static.copies_before > 0  # the translated loop has copies...
            assert executed == (0 if at_load else static.copies_before)  # ...gone only with the pass
        else:
            assert static.copies_before == executed == 0  # a PIR export's loop has none
        if at_export:
            assert exported.report.removed == 0 and exported.report.kept == ()


@pytest.mark.parametrize("fmt", ["pir", "legacy"])
def test_sampling_with_a_seed_gives_the_same_tokens_with_and_without_the_pass(models, exports, fmt):
    _, tokenizer = models("llama2")
    ids, mask = encode(tokenizer, TEXTS)
    if fmt == "pir":
        runs = [StaticGenerationModel(exports("llama2", "pir", clean).directory, remove_loop_assign=False)
                for clean in (False, True)]
    else:
        directory = exports("llama2", "legacy", False).directory
        runs = [StaticGenerationModel(directory, remove_loop_assign=clean) for clean in (False, True)]
    plain, cleaned = (run.run(feed(ids, mask, SAMPLING, seed=11)) for run in runs)
    np.testing.assert_array_equal(plain, cleaned)
    assert not np.array_equal(plain, runs[0].run(feed(ids, mask, SAMPLING, seed=12)))  # the seed matters


def test_export_directory_holds_what_paddlenlp_saves_and_how_it_was_made(exports):
    for fmt, program in (("pir", "model.json"), ("legacy", "model.pdmodel")):
        exported = exports("llama2", fmt, fmt == "pir")
        files = {path.name for path in exported.directory.iterdir()}
        assert {program, "model.pdiparams", "config.json", "generation_config.json", "tokenizer_config.json",
                "sentencepiece.bpe.model", METADATA_FILE} <= files
        metadata = json.loads((exported.directory / METADATA_FILE).read_text())
        assert metadata["format"] == fmt
        assert metadata["inputs"] == ["input_ids", "attention_mask", "max_new_tokens", *SETTING_INPUTS]
        assert metadata["decoding"]["decode_strategy"] == "greedy_search"
        generation = GenerationConfig.from_pretrained(str(exported.directory))  # as PaddleNLP reads it
        assert (generation.decode_strategy, generation.eos_token_id, generation.pad_token_id) == ("greedy_search", 2, 0)
    legacy = json.loads((exports("llama2", "legacy").directory / METADATA_FILE).read_text())
    assert legacy["remove_loop_assign"] is False and legacy["report"] is None


def test_exporting_twice_into_one_directory_is_an_error(models, exports):
    model, _ = models("llama2")
    exported = exports("llama2", "pir")
    before = sorted(path.name for path in exported.directory.iterdir())
    with dygraph_mode(), pytest.raises(ExportError, match="already exists and is not empty"):
        export_generation_model(model, exported.directory)
    assert sorted(path.name for path in exported.directory.iterdir()) == before


def test_a_failed_export_leaves_no_directory(models, tmp_path):
    model, tokenizer = models("llama2")

    class BrokenTokenizer:
        def save_pretrained(self, directory):
            raise OSError("disk full")

    with dygraph_mode(), pytest.raises(OSError, match="disk full"):
        export_generation_model(model, tmp_path / "out", tokenizer=BrokenTokenizer())
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_an_error(models, tmp_path):
    model, _ = models("llama2")
    with pytest.raises(ExportError, match="format must be one of pir, legacy"):
        export_generation_model(model, tmp_path / "out", format="onnx")
    assert list(tmp_path.iterdir()) == []
