"""A named model size without its weights, for speed and memory runs on machines that cannot
download them (train.py --random_weights True builds the model from it).

    python tools/architecture.py bloom-560m DATA_FOLDER OUT_FOLDER
    python tools/architecture.py llama-3.2-1b DATA_FOLDER OUT_FOLDER

The names are workshop/models.py's (BLOOM's sizes and other families' shapes, from their
config.json on the hub). The tokenizer is a byte-level BPE trained on the SQuAD rows in
DATA_FOLDER (the models' own tokenizers need the hub): SQuAD prompts come out at a similar
length in tokens, so speed and memory are representative; losses of random weights mean nothing.
"""
import argparse
import json
from pathlib import Path

from make_tiny import build_tokenizer, tokenizer_corpus
from workshop.models import NAMES, named_config

TOKENIZER_VOCABULARY = 50_000  # enough for SQuAD's English; the model keeps its own vocabulary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("data", type=Path, help="folder with train.jsonl (SQuAD rows)")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    # the tokenizer's special tokens: <unk> <s> </s> <pad> are ids 0-3 (make_tiny.py)
    config = named_config(args.name, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    config.save_pretrained(args.out)
    rows = [json.loads(line) for line in (args.data / "train.jsonl").read_text().splitlines()]
    build_tokenizer(tokenizer_corpus(rows), TOKENIZER_VOCABULARY).save_pretrained(args.out)
    print(f"{args.name} architecture and a SQuAD BPE tokenizer in {args.out}")


if __name__ == "__main__":
    main()
