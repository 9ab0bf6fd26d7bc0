"""Write a random-weight PaddleNLP llama checkpoint of a benchmark preset's shape, to run
a whole model through the drop-in predictor where no real checkpoint can be downloaded.

    python scripts/random_checkpoint.py --preset llama2-7b --dtype bfloat16 --output /work/ckpt7b
    python -m paddlenlp_ext.predictor --model_name_or_path /work/ckpt7b --mode static \
        --dtype bfloat16 --src_length 512 --max_length 32 --decode_strategy greedy_search --benchmark

The weights are drawn in ``--dtype`` (``bench.models.random_llama``: a whole bfloat16
llama2-7B is never held in float32) and saved in PaddleNLP's sharded layout
(``model_state-0000i-of-0000n.pdparams`` and ``model_state.pdparams.index.json``), one
shard of about 2 GiB at a time: ``save_pretrained`` copies every tensor at once, which
does not fit 24 GiB beside the model. The tokenizer is the shipped one (2,000 pieces),
padded with unused pieces ``<padN>`` to the model's vocabulary, so that every id the
random model generates decodes.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

from bench.models import PRESETS, default_intermediate_size, random_llama

from paddlenlp_ext.cli_flags import OneLineParser

SHARD_BYTES = 2 * 2**30


class CheckpointError(Exception):
    """A bad argument: reported on one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="scripts/random_checkpoint.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama2-7b")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the preset's)")
    parser.add_argument("--vocab-size", type=int, help="(default: the preset's)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--max-position-embeddings", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="the checkpoint directory to write (must not exist)")
    return parser


def write_checkpoint(settings: dict, layers: int, dtype: str, output: Path) -> None:
    """The checkpoint, written in a staging directory that becomes ``output`` when it is
    complete (``export.staged_directory``)."""
    from paddlenlp_ext.export import staged_directory

    with staged_directory(output) as staging:
        _write(settings, layers, dtype, staging)


def _write(settings: dict, layers: int, dtype: str, output: Path) -> None:
    import paddle

    from paddlenlp_ext.paddle_modes import dygraph_mode

    with dygraph_mode():
        model = random_llama(settings, layers, dtype)
        model.config.architectures = [type(model).__name__]  # what from_pretrained reads the class from
        model.config.save_pretrained(str(output))
        model.generation_config.save_pretrained(str(output))
        state = model.state_dict()
        sizes = {name: tensor.numel().item() * tensor.element_size() for name, tensor in state.items()}
        shards, size = [[]], 0
        for name, nbytes in sizes.items():
            if size > SHARD_BYTES:
                shards.append([])
                size = 0
            shards[-1].append(name)
            size += nbytes
        weight_map = {}
        for number, names in enumerate(shards, start=1):
            file = f"model_state-{number:05d}-of-{len(shards):05d}.pdparams"
            paddle.save({name: state[name] for name in names}, str(output / file))
            weight_map.update(dict.fromkeys(names, file))
            gc.collect()
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (output / "model_state.pdparams.index.json").write_text(json.dumps(index, indent=2) + "\n")
    _save_padded_tokenizer(settings["vocab_size"], output)


def _save_padded_tokenizer(vocab_size: int, output: Path) -> None:
    """The shipped tokenizer with unused pieces appended up to ``vocab_size``, saved."""
    from paddlenlp.transformers import LlamaTokenizer
    from sentencepiece import sentencepiece_model_pb2

    proto = _shipped_tokenizer()
    lowest = min(piece.score for piece in proto.pieces)
    for number in range(vocab_size - len(proto.pieces)):
        piece = proto.pieces.add()
        piece.piece, piece.score = f"<pad{number}>", lowest - 1.0
        piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    vocab_file = output / LlamaTokenizer.resource_files_names["vocab_file"]  # the name save_pretrained gives it
    vocab_file.write_bytes(proto.SerializeToString())
    LlamaTokenizer(vocab_file=str(vocab_file), pad_token="<unk>").save_pretrained(str(output))


def _shipped_tokenizer():
    """The shipped tokenizer's sentencepiece ``ModelProto``."""
    from sentencepiece import sentencepiece_model_pb2

    from paddlenlp_ext.models import TOKENIZER_MODEL

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(TOKENIZER_MODEL.read_bytes())
    return proto


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        settings = {**PRESETS[args.preset], "seed": args.seed, "max_position_embeddings": args.max_position_embeddings}
        if args.vocab_size is not None:
            settings["vocab_size"] = args.vocab_size
        if settings["intermediate_size"] is None:
            settings["intermediate_size"] = default_intermediate_size(settings["hidden_size"])
        layers = settings["layers"] if args.layers is None else args.layers
        if layers <= 0:
            raise CheckpointError(f"--layers must be positive, got {layers}")
        pieces = len(_shipped_tokenizer().pieces)
        if settings["vocab_size"] < pieces:
            raise CheckpointError(f"--vocab-size must be at least the shipped tokenizer's {pieces} pieces, "
                                  f"got {settings['vocab_size']}")
        output = Path(args.output)
        if output.exists():
            raise CheckpointError(f"--output {output} exists; name a new directory")
        write_checkpoint(settings, layers, args.dtype, output)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
