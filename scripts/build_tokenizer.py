"""Train the sentencepiece model of the embedded llama2 models from the shipped corpus.

Reads ``paddlenlp_ext/data/tokenizer_corpus.txt`` and writes
``paddlenlp_ext/data/llama2_tokenizer.model`` (or ``--output``). Training is
deterministic: one thread, the whole corpus in file order (no sampling), and no file
paths in the trained model, so a run gives the same bytes on any machine with the
same sentencepiece; the shipped model was built with sentencepiece 0.2.3, and
tests/test_models.py rebuilds it and compares. The model is shipped rather than
trained on first use because the trainer's output may change between sentencepiece
releases, and the token ids must not.

    python scripts/build_tokenizer.py [--output PATH]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "paddlenlp_ext" / "data"
CORPUS = DATA_DIR / "tokenizer_corpus.txt"
MODEL = DATA_DIR / "llama2_tokenizer.model"

# Llama 2's own trainer options (its model's trainer_spec), at a small vocabulary:
# BPE, digits split, byte fallback for characters outside the vocabulary, no
# normalization, and the ids unk=0, bos=1, eos=2 with no pad piece.
TRAINER_OPTIONS = {
    "model_type": "bpe",
    "vocab_size": 2000,
    "character_coverage": 1.0,  # the corpus is small: keep every character it has
    "byte_fallback": True,
    "split_digits": True,
    "allow_whitespace_only_pieces": True,
    "normalization_rule_name": "identity",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "num_threads": 1,
    "input_sentence_size": 0,  # all sentences, so no random sampling
    "minloglevel": 2,
}


class BuildError(Exception):
    """A bad argument: reported on one line, exit code 2."""


def build_tokenizer(corpus: Path) -> bytes:
    """The serialized sentencepiece model trained on ``corpus``, one sentence a line."""
    import sentencepiece

    sentences = corpus.read_text(encoding="utf-8").splitlines()
    model = io.BytesIO()
    # Sentences from an iterator rather than a file name: the trainer records its
    # input file's path in the model, which would make the bytes depend on it.
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model,
                                             **TRAINER_OPTIONS)
    return model.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=MODEL, help=f"model file to write (default {MODEL})")
    args = parser.parse_args(argv)
    try:
        if not args.output.parent.is_dir():
            raise BuildError(f"{args.output.parent}: no such directory")
        model = build_tokenizer(CORPUS)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.output.write_bytes(model)
    print(f"wrote {args.output} ({len(model)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
