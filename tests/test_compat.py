"""Every patch in paddlenlp_ext.compat is needed: the export fails without it."""

import paddle
import pytest

import paddlenlp_ext.compat as compat
from paddlenlp_ext.decoding import DecodingConfig, GenerationLoop, export_legacy
from paddlenlp_ext.models import load_model
from paddlenlp_ext.paddle_modes import dygraph_mode


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    model, _ = load_model("llama2", cache_dir=tmp_path_factory.mktemp("models"))
    return GenerationLoop(model, DecodingConfig(eos_token_id=2))


def export(loop, directory):
    with dygraph_mode():
        export_legacy(loop, str(directory / "model"))


@pytest.mark.parametrize("op", sorted(compat._LEGACY_OPS))
def test_legacy_export_fails_without_each_op_patch(loop, tmp_path, monkeypatch, op):
    monkeypatch.setattr(compat, "_LEGACY_OPS", {k: v for k, v in compat._LEGACY_OPS.items() if k != op})
    with pytest.raises(TypeError, match="must be Value, but got Variable"):
        export(loop, tmp_path)


def test_legacy_export_fails_without_the_swiglu_patch(loop, tmp_path, monkeypatch):
    import paddle.incubate.nn.functional as incubate

    monkeypatch.setattr(compat, "_swiglu", incubate.swiglu)  # what PaddleNLP would call
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute"):
        export(loop, tmp_path)


def test_legacy_export_works_and_restores_everything(loop, tmp_path):
    import paddlenlp.transformers.llama.modeling as llama_modeling

    originals = (paddle.matmul, paddle.tensor.argmax, llama_modeling.swiglu)
    export(loop, tmp_path)
    assert (tmp_path / "model.pdmodel").is_file()
    assert (paddle.matmul, paddle.tensor.argmax, llama_modeling.swiglu) == originals
