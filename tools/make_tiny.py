"""Build a tiny BLOOM, its tokenizer and SQuAD-format data, so every stage runs on a
laptop CPU with no download (the quick-start demo and the tests use it).

    python tools/make_tiny.py tiny        # -> tiny/model/ and tiny/data/{train,validation}.jsonl

The data are made-up facts ("The river Malova flows through Tesk.") asked about in
SQuAD's row format, so a model of 100k parameters can learn them in seconds and the
loss visibly falls. The real workshop uses bigscience/bloom-560m and the hub's `squad`.
"""
import argparse
import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BloomConfig, BloomForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # BLOOM's own special tokens and ids 0-3

# Small enough to train in seconds on 2 cores, big enough to have every part of BLOOM.
TINY_BLOOM = dict(vocab_size=512, hidden_size=64, n_layer=2, n_head=4,
                  bos_token_id=1, eos_token_id=2, pad_token_id=3)

SYLLABLES = ["ka", "lo", "mi", "ra", "te", "vo", "su", "ne", "pa", "di", "go", "ul"]
FACTS = [  # (sentence, question, which slot is the answer)
    ("The river {a} flows through {b}.", "Which town does the river {a} flow through?", "b"),
    ("{a} was founded by {b} in {year}.", "Who founded {a}?", "b"),
    ("{a} was founded by {b} in {year}.", "In which year was {a} founded?", "year"),
    ("The capital of {a} is {b}.", "What is the capital of {a}?", "b"),
    ("{a} is famous for its {thing}.", "What is {a} famous for?", "thing"),
]
THINGS = ["bridges", "copper mines", "glass", "horses", "libraries", "salt", "wool"]


def name(rng):
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def squad_rows(n, rng, prefix):
    """n SQuAD rows: each context holds three facts; the question asks about the first."""
    rows = []
    for i in range(n):
        sentences, qa = [], None
        for template, question, slot in rng.sample(FACTS, 3):
            values = dict(a=name(rng), b=name(rng), year=str(rng.randint(1100, 1999)),
                          thing=rng.choice(THINGS))
            sentences.append(template.format(**values))
            qa = qa or (question.format(**values), values[slot])
        context = " ".join(sentences)
        answer = qa[1]
        rows.append(dict(id=f"{prefix}{i:05d}", title="tiny", context=context, question=qa[0],
                         answers=dict(text=[answer], answer_start=[context.index(answer)])))
    return rows


def write_jsonl(rows, path):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def tokenizer_corpus(rows):
    """The texts a tokenizer is trained on: the workshop's prompts with their answers."""
    return [f"Question: {r['question']} Context: {r['context']} Answer: {r['answers']['text'][0]}"
            for r in rows]


def build_tokenizer(texts, vocab_size=TINY_BLOOM["vocab_size"]):
    """A byte-level BPE like BLOOM's, trained on texts; saved as a fast tokenizer."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", padding_side="right")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create (model/ and data/ inside)")
    parser.add_argument("--train-rows", type=int, default=64)
    parser.add_argument("--validation-rows", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)  # the same tiny model every time
    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    train = squad_rows(args.train_rows, rng, "train")
    validation = squad_rows(args.validation_rows, rng, "val")
    write_jsonl(train, data / "train.jsonl")
    write_jsonl(validation, data / "validation.jsonl")

    tokenizer = build_tokenizer(tokenizer_corpus(train))
    model = BloomForCausalLM(BloomConfig(**TINY_BLOOM))
    model.save_pretrained(args.out / "model")
    tokenizer.save_pretrained(args.out / "model")
    print(f"tiny BLOOM ({model.num_parameters():,} parameters) in {args.out / 'model'}, "
          f"{len(train)}+{len(validation)} rows in {data}")


if __name__ == "__main__":
    main()
