"""Did the model learn to answer? SQuAD exact match and F1 of its greedy answers.

    python answer_quality.py runs/baseline-1234     # a saved model folder, on its own

Eval loss alone does not say it: on 500 examples it rises every epoch while the answers can
still improve. The model continues `Question: ... Context: ... Answer:` greedily; its answer
is what it writes before the end-of-text token or a new line, scored against every
reference answer with the official SQuAD v1.1 normalisation (lowercase, no punctuation, no
articles, single spaces) and the best reference counted. train.py scores the validation
subset before and after fine-tuning and writes both to run_metrics.json.
"""
import argparse
import collections
import json
import re
import string
import sys
from dataclasses import fields
from pathlib import Path

import torch

from config import WorkshopArguments
from data_loader import load_split, prompt

MAX_ANSWER_TOKENS = 32  # SQuAD answers are short: 95% have fewer than 15 words
ANSWERS_FILE = "answers.jsonl"


def normalize_answer(text):
    """The official SQuAD v1.1 evaluation script's normalisation."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction, reference):
    return normalize_answer(prediction) == normalize_answer(reference)


def f1(prediction, reference):
    """Harmonic mean of precision and recall over the normalised words."""
    ours, theirs = normalize_answer(prediction).split(), normalize_answer(reference).split()
    same = sum((collections.Counter(ours) & collections.Counter(theirs)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(ours), same / len(theirs)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions, references):
    """(exact match %, F1 %): each prediction scored against its best reference answer."""
    em = [max(exact_match(p, r) for r in refs) for p, refs in zip(predictions, references)]
    f = [max(f1(p, r) for r in refs) for p, refs in zip(predictions, references)]
    return 100 * sum(em) / len(em), 100 * sum(f) / len(f)


@torch.no_grad()
def generate_answers(model, tokenizer, rows, max_length, device, batch_size=8):
    """Greedy answers to the rows' prompts. Prompts longer than max_length minus the answer's
    room (at least half of max_length) lose their start. Under ZeRO-3 with several ranks every rank must call this at once:
    each layer is gathered from all of them (generate() sees it and keeps them in step)."""
    was_training, sides = model.training, (tokenizer.padding_side, tokenizer.truncation_side)
    model.eval()
    tokenizer.padding_side = tokenizer.truncation_side = "left"  # the answer follows the prompt
    answers = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = tokenizer([prompt(row) for row in rows[start:start + batch_size]],
                              return_tensors="pt", padding=True, truncation=True,
                              max_length=max(max_length - MAX_ANSWER_TOKENS, max_length // 2),
                              add_special_tokens=False).to(device)
            out = model.generate(**batch, max_new_tokens=MAX_ANSWER_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            answers += [text.strip().split("\n")[0].strip() for text in texts]
    finally:
        model.train(was_training)
        tokenizer.padding_side, tokenizer.truncation_side = sides
    return answers


def answer_quality(model, tokenizer, rows, max_length, device):
    """{"exact_match", "f1", "samples"} and the answers themselves."""
    answers = generate_answers(model, tokenizer, rows, max_length, device)
    em, f = squad_scores(answers, [row["answers"]["text"] for row in rows])
    return dict(exact_match=em, f1=f, samples=len(rows)), answers


def write_answers(path, rows, answers):
    """One JSON line per question: what the model answered, and the references."""
    with open(path, "w", encoding="utf-8") as file:
        for row, answer in zip(rows, answers):
            file.write(json.dumps(dict(id=row.get("id"), question=row["question"], answer=answer,
                                       references=row["answers"]["text"]), ensure_ascii=False) + "\n")


def main():
    defaults = {f.name: f.default for f in fields(WorkshopArguments)}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a saved model folder (train.py's output folder)")
    for name in ("dataset_name_or_path", "eval_samples", "max_length"):
        parser.add_argument(f"--{name}", type=type(defaults[name]), default=defaults[name])
    args = parser.parse_args()
    from model import load_model  # here: --help stays quick
    try:
        if not (Path(args.model_dir) / "config.json").is_file():
            raise ValueError(f"{args.model_dir} holds no saved model (no config.json)")
        model, tokenizer = load_model(args.model_dir)
        rows = load_split(args.dataset_name_or_path, "validation", args.eval_samples)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scores, answers = answer_quality(model.to(device), tokenizer, rows, args.max_length, device)
    write_answers(Path(args.model_dir) / ANSWERS_FILE, rows, answers)
    print(f"exact match {scores['exact_match']:.1f}  F1 {scores['f1']:.1f}  "
          f"({len(rows)} validation questions; answers in {Path(args.model_dir) / ANSWERS_FILE})")


if __name__ == "__main__":
    main()
