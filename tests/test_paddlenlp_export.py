"""PaddleNLP 2.8.1's own export, ``model.to_static(path, config)`` (its
``llm/export_model.py``), under ``compat.paddlenlp_export_patches`` on Paddle 3.3.1:
both program formats export, the exported loops give PaddleNLP's dynamic greedy tokens
on Paddle Inference (with and without the pass), and every patch is needed."""

import contextlib
import os
import weakref

import numpy as np
import paddle
import pytest
from test_decoding import left_padded, paddlenlp_greedy

import paddlenlp_ext
import paddlenlp_ext.compat as compat
import paddlenlp_ext.compat.legacy_ops as legacy_ops
import paddlenlp_ext.compat.paddlenlp_export as paddlenlp_export
import paddlenlp_ext.compat.pir_export as pir_export
from paddlenlp_ext.inference import StaticGenerationModel
from paddlenlp_ext.models import load_model
from paddlenlp_ext.paddle_modes import dygraph_mode

TEXTS = ["The weather today", "My favourite recipe for a quick dinner with friends is"]
NEW_TOKENS = 8
TOP_K = {"dtype": "float32", "export_precache": False, "use_top_p": False}  # export_model.py's config, top-k
TOP_P = {"dtype": "float32", "export_precache": False}  # its default: use_top_p True
GUARDS = {"pir": paddle.pir_utils.IrGuard, "legacy": paddle.pir_utils.OldIrGuard}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return load_model("llama2", cache_dir=tmp_path_factory.mktemp("models"))


def to_static(model, directory, fmt, config=TOP_K):
    """What a PaddleNLP user runs, in the given program format, with the patches."""
    with GUARDS[fmt](), compat.paddlenlp_export_patches(), dygraph_mode():
        model.to_static(str(directory / "model"), config)


@pytest.fixture(scope="module")
def exported(llama, tmp_path_factory):
    """``exported[fmt]``: (directory, hook reports). The PIR export runs inside
    ``paddlenlp_ext.enable()``, so the saved program is the cleaned one."""
    model, _ = llama
    done = {}
    for fmt in ("pir", "legacy"):
        directory = tmp_path_factory.mktemp(f"paddlenlp-{fmt}")
        with paddlenlp_ext.enable() as hook:
            to_static(model, directory, fmt)
        done[fmt] = (directory, hook.reports)
    return done


def paddlenlp_inputs(tokenizer, top_k):
    """The inputs PaddleNLP's static predictor feeds: left-padded ids, mask, positions
    counting real tokens from 0, and the flags as int64 [1]."""
    ids, mask = left_padded([tokenizer(text)["input_ids"] for text in TEXTS])
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype("int64")
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
            "max_new_tokens": np.array([NEW_TOKENS], dtype="int64"), "top_k": np.array([top_k], dtype="int64")}


def test_both_formats_export(exported):
    assert sorted(os.listdir(exported["pir"][0])) == ["model.json", "model.pdiparams"]
    assert {"model.pdmodel", "model.pdiparams"} <= set(os.listdir(exported["legacy"][0]))


@pytest.mark.parametrize("fmt", ["pir", "legacy"])
@pytest.mark.parametrize("clean", [False, True], ids=["as-exported", "pass"])
def test_top_k_1_gives_paddlenlp_greedy_tokens(llama, exported, fmt, clean):
    model, tokenizer = llama
    feed = paddlenlp_inputs(tokenizer, top_k=1)
    static = StaticGenerationModel(exported[fmt][0], remove_loop_assign=clean)
    assert sorted(static.input_names) == sorted(feed)
    expected = paddlenlp_greedy(model, feed["input_ids"], feed["attention_mask"], eos_token_id=2)
    np.testing.assert_array_equal(static.run(feed), expected)
    # A legacy loop translated to PIR carries 10 copies (4 KV caches, ids, mask,
    # positions, scores, unfinished flag, condition), all removed; a PIR loop has none.
    assert static.copies_before == (10 if fmt == "legacy" else 0)
    assert static.copies_after == (static.copies_before if not clean else 0)
    if clean:
        assert static.report.kept == ()


@pytest.mark.parametrize("fmt", ["pir", "legacy"])
def test_top_k_sampling_draws_among_the_top_k(llama, exported, fmt):
    """Top-k sampling (multinomial, unseeded): every token is one of the k most
    probable after its prefix, by the dynamic model."""
    model, tokenizer = llama
    feed = paddlenlp_inputs(tokenizer, top_k=3)
    tokens = StaticGenerationModel(exported[fmt][0]).run(feed)
    ids = np.concatenate([feed["input_ids"], tokens], axis=1)
    mask = np.concatenate([feed["attention_mask"], np.ones_like(tokens)], axis=1)
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with dygraph_mode():
        logits = model(paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask),
                       position_ids=paddle.to_tensor(positions), return_dict=False)[0].numpy()
    prompt = feed["input_ids"].shape[1]
    top3 = np.argsort(-logits[:, prompt - 1:-1], axis=-1)[..., :3]
    assert np.all((top3 == tokens[..., None]).any(axis=-1))


def test_enable_runs_the_pass_on_the_pir_save(exported):
    (path, report), = exported["pir"][1]
    assert path.endswith("model")
    assert (report.loops, report.removed, report.kept) == (1, 0, ())
    assert exported["legacy"][1] == []  # a legacy save holds no copies yet: cleaned at load


@pytest.mark.parametrize("fmt", ["pir", "legacy"])
def test_top_p_export_is_a_one_line_error(llama, tmp_path, fmt):
    with pytest.raises(compat.TopPSamplingUnavailable, match=r"^top_p_sampling has no kernel .*'use_top_p': False"):
        to_static(llama[0], tmp_path, fmt, TOP_P)


def test_patches_are_restored(llama, tmp_path):
    import paddlenlp.generation.utils as generation_utils

    names = [(paddle, "any"), (paddle, "logical_and"), (paddle, "tril"), (generation_utils, "TopKProcess"),
             (generation_utils.GenerationMixin, "to_static")]
    before = [getattr(owner, name) for owner, name in names]
    environment = dict(os.environ)
    for guard in GUARDS.values():
        with guard(), compat.paddlenlp_export_patches():
            assert generation_utils.TopKProcess is paddlenlp_export._top_k_process
        assert [getattr(owner, name) for owner, name in names] == before
        assert dict(os.environ) == environment


# --- each patch is needed: without it, to_static fails as upstream does ---------------


def test_pir_fails_without_the_attention_patch(llama, tmp_path, monkeypatch):
    monkeypatch.setattr(paddlenlp_export, "pir_export_patches", contextlib.nullcontext)
    with pytest.raises(TypeError, match=r"bool\(Tensor\) is not supported") as error:
        to_static(llama[0], tmp_path, "pir")
    assert "attn_weights.shape" in str(error.value)


def test_pir_fails_without_the_top_k_process_patch(llama, tmp_path, monkeypatch):
    import paddlenlp.generation.logits_process as logits_process

    monkeypatch.setattr(paddlenlp_export, "_top_k_process", logits_process.TopKProcess)
    with pytest.raises(TypeError, match=r"bool\(Tensor\) is not supported") as error:
        to_static(llama[0], tmp_path, "pir")
    assert "min(max(top_k, min_tokens_to_keep)" in str(error.value)


def top_k_ops(directory):
    """(op type, inputs) of the top_k_v2 ops of a legacy export."""
    with paddle.pir_utils.OldIrGuard():
        paddle.enable_static()
        program, _, _ = paddle.static.load_inference_model(str(directory / "model"),
                                                           paddle.static.Executor(paddle.CPUPlace()))
    return [(op.input("K"), op.attr("k")) for block in program.blocks for op in block.ops if op.type == "top_k_v2"]


def test_legacy_ignores_top_k_without_the_top_k_process_patch(llama, exported, tmp_path, monkeypatch):
    """No error in legacy format: ``max(top_k, 1)`` compares a Variable, which is true,
    so the program samples from the top 1 whatever top_k it is fed."""
    import paddlenlp.generation.logits_process as logits_process

    assert all(k_input and k_input[0].startswith("clip") for k_input, _ in top_k_ops(exported["legacy"][0]))
    monkeypatch.setattr(paddlenlp_export, "_top_k_process", logits_process.TopKProcess)
    to_static(llama[0], tmp_path, "legacy")
    assert top_k_ops(tmp_path) == [([], 1), ([], 1)]


def test_pir_fails_without_the_view_check_switch(llama, tmp_path, monkeypatch):
    monkeypatch.delenv("stride_in_no_check_dy2st_diff", raising=False)
    monkeypatch.setattr(paddlenlp_export, "_PIR_ENVIRONMENT", {})
    with pytest.raises(ValueError, match="pd_op.increment_'s output variable is a viewed Tensor"):
        to_static(llama[0], tmp_path, "pir")


def test_legacy_fails_without_the_llama_legacy_patches(llama, tmp_path, monkeypatch):
    monkeypatch.setattr(paddlenlp_export, "legacy_export_patches", contextlib.nullcontext)
    with pytest.raises(TypeError, match=r"tril\(\): argument \(position 1\) must be Value, but got Variable"):
        to_static(llama[0], tmp_path, "legacy")


@pytest.mark.parametrize("op", sorted(legacy_ops.SAMPLER_LEGACY_OPS))
def test_legacy_fails_without_each_sampler_op_patch(llama, tmp_path, monkeypatch, op):
    monkeypatch.setattr(legacy_ops, "SAMPLER_LEGACY_OPS",
                        {k: v for k, v in legacy_ops.SAMPLER_LEGACY_OPS.items() if k != op})
    with pytest.raises(TypeError, match=rf"{op}\(\): argument \(position 1\) must be Value, but got Variable"):
        to_static(llama[0], tmp_path, "legacy")


def test_legacy_fails_without_the_pad_id_patch(llama, tmp_path, monkeypatch):
    monkeypatch.setattr(paddlenlp_export, "_fill_special_token_ids", lambda model, config: config)
    with pytest.raises(TypeError, match="The fill_value should be .* but received <class 'NoneType'>"):
        to_static(llama[0], tmp_path, "legacy")


@pytest.mark.parametrize("fmt, error", [("pir", r"top_p_sampling.*expected_dtype"),
                                        ("legacy", r"kernel `top_p_sampling` is not registered")])
def test_top_p_fails_obscurely_without_the_check(llama, tmp_path, monkeypatch, fmt, error):
    monkeypatch.setattr(paddlenlp_export, "_check_top_p_sampling", lambda config: None)
    with pytest.raises((TypeError, RuntimeError), match=error):
        to_static(llama[0], tmp_path, fmt, TOP_P)


def test_retry_with_the_patches_after_a_failed_export(tmp_path):
    """In a pytest process of its own: in a pytest-xdist worker (the suite runs in two)
    the failed unpatched conversion is not reused even without the isolation, so the
    check that the isolation is needed cannot fail there."""
    import subprocess
    import sys

    test = f"{__file__}::check_retry_with_the_patches_after_a_failed_export"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                             "-o", "python_functions=check_*", test, "--basetemp", str(tmp_path / "own")],
                            capture_output=True, text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0 and summary.startswith("1 passed"), result.stdout[-3000:]


def check_retry_with_the_patches_after_a_failed_export(llama, tmp_path, monkeypatch):
    """dy2static keeps each converted function, with a copy of its module's globals,
    for the process: the failed unpatched to_static would be reused by the retry."""
    from paddle.jit.dy2static import program_translator

    model = llama[0]
    # Start from an empty process-wide cache: what earlier tests converted must not
    # decide what this one sees.
    monkeypatch.setattr(program_translator._FUNCTION_CACHE, "_converted_static_func_caches",
                        weakref.WeakKeyDictionary())

    def unpatched():
        with pytest.raises(TypeError, match=r"bool\(Tensor\) is not supported"), paddle.pir_utils.IrGuard(), \
                dygraph_mode():
            model.to_static(str(tmp_path / "failed" / "model"), TOP_K)

    unpatched()
    to_static(model, tmp_path, "pir")
    unpatched()  # and the patches do not stay in the cache either
    monkeypatch.setattr(pir_export, "isolated_dy2static_cache", contextlib.nullcontext)
    with pytest.raises(TypeError, match=r"bool\(Tensor\) is not supported"):
        to_static(model, tmp_path / "again", "pir")
