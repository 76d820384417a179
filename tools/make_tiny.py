"""Build a tiny BLOOM (or a tiny model of another family), its tokenizer and SQuAD-format data,
so every stage runs on a laptop CPU with no download (the quick-start demo and the tests use it).

    python tools/make_tiny.py tiny                   # -> tiny/model/ and tiny/data/{train,validation}.jsonl
    python tools/make_tiny.py tiny --family llama    # a tiny Llama instead (FAMILIES below)

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
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # BLOOM's own special tokens and ids 0-3

# Small enough to train in seconds on 2 cores, big enough to have every part of BLOOM.
TINY_BLOOM = dict(vocab_size=512, hidden_size=64, n_layer=2, n_head=4,
                  bos_token_id=1, eos_token_id=2, pad_token_id=3)
# The other families at the same size, each with what sets it apart: grouped-query attention
# (2 key/value heads for 4 query heads), untied or tied output layers, Gemma 2's softcaps,
# OPT's projection between its hidden size and its embeddings.
LAYERS = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=3)
FAMILIES = {
    "bloom": dict(model_type="bloom", **TINY_BLOOM),
    "llama": dict(model_type="llama", num_key_value_heads=2, tie_word_embeddings=False, **LAYERS),
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2, tie_word_embeddings=True, **LAYERS),
    "qwen3": dict(model_type="qwen3", num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, **LAYERS),
    "mistral": dict(model_type="mistral", num_key_value_heads=2, sliding_window=32, **LAYERS),
    "gemma": dict(model_type="gemma", num_key_value_heads=2, head_dim=16, **LAYERS),
    "gemma2": dict(model_type="gemma2", num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                   sliding_window=32, final_logit_softcapping=30.0, attn_logit_softcapping=50.0, **LAYERS),
    "phi3": dict(model_type="phi3", num_key_value_heads=2, **LAYERS),
    "gpt2": dict(model_type="gpt2", vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                 bos_token_id=1, eos_token_id=2, pad_token_id=3),
    "opt": dict(model_type="opt", vocab_size=512, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=512,
                bos_token_id=1, eos_token_id=2, pad_token_id=3),
}


def tiny_model(family):
    """A tiny model of a family (FAMILIES), random weights of the seed set by the caller."""
    keys = dict(FAMILIES[family])
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(keys.pop("model_type"), **keys))

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
    parser.add_argument("--family", choices=FAMILIES, default="bloom", help="the model's family")
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
    model = tiny_model(args.family)
    model.save_pretrained(args.out / "model")
    tokenizer.save_pretrained(args.out / "model")
    print(f"tiny {args.family} ({model.num_parameters():,} parameters) in {args.out / 'model'}, "
          f"{len(train)}+{len(validation)} rows in {data}")


if __name__ == "__main__":
    main()
