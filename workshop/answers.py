"""Did the model learn to answer? SQuAD exact match and F1 of its greedy answers.

    python -m workshop.answers baseline/runs/baseline-1234    # a run's saved model, scored again

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
from pathlib import Path

import torch

from workshop.squad import fitted_ids, load_split

MAX_ANSWER_TOKENS = 32  # SQuAD answers are short: 95% have fewer than 15 words
PROMPT_TOKENS_PER_BATCH = 16384  # 32 prompts of 512 tokens: one or two batches of questions
ANSWERS_FILE = "answers.jsonl"
RESCORED_FILE = "answers-rescored.jsonl"  # scored on its own: the run's file stays


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
def generate_answers(model, tokenizer, rows, max_length, device):
    """Greedy answers to the rows' prompts. A prompt longer than max_length minus the answer's
    room (at least half of max_length) loses the end of its context, as in training. Under
    ZeRO-3 with several ranks every rank must call this at once: each layer is gathered from
    all of them (generate() sees it and keeps them in step)."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # the answer follows the prompt
    room = max(max_length - MAX_ANSWER_TOKENS, max_length // 2)
    prompts = [fitted_ids(tokenizer, row, room)[0] for row in rows]
    batch_size = max(1, PROMPT_TOKENS_PER_BATCH // max_length)
    answers = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = tokenizer.pad({"input_ids": prompts[start:start + batch_size]},
                                  return_tensors="pt").to(device)
            out = model.generate(**batch, max_new_tokens=MAX_ANSWER_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            answers += [text.strip().split("\n")[0].strip() for text in texts]
    finally:
        model.train(was_training)
        tokenizer.padding_side = side
    return answers


def answer_quality(model, tokenizer, rows, max_length, device):
    """{"exact_match", "f1", "samples"} and the answers themselves."""
    answers = generate_answers(model, tokenizer, rows, max_length, device)
    em, f = squad_scores(answers, [row["answers"]["text"] for row in rows])
    return dict(exact_match=em, f1=f, samples=len(rows)), answers


def write_answers(folder, rows, answers, name=ANSWERS_FILE):
    """One JSON line per question: what the model answered, and the references."""
    with open(Path(folder) / name, "w", encoding="utf-8") as file:
        for row, answer in zip(rows, answers):
            file.write(json.dumps(dict(id=row.get("id"), question=row["question"], answer=answer,
                                       references=row["answers"]["text"]), ensure_ascii=False) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run's output folder (train.py's --output_dir)")
    parser.add_argument("--dataset_name_or_path", help="default: the run's (run_metrics.json)")
    parser.add_argument("--eval_samples", type=int, help="default: the run's")
    parser.add_argument("--max_length", type=int, help="default: the run's")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer  # here: --help stays quick
    try:
        if not (args.run / "config.json").is_file():
            raise ValueError(f"{args.run} holds no saved model (no config.json): give a finished "
                             f"run's folder")
        run = json.loads((args.run / "run_metrics.json").read_text()) \
            if (args.run / "run_metrics.json").is_file() else {}
        dataset = args.dataset_name_or_path or run.get("dataset")
        samples, max_length = args.eval_samples or run.get("eval_samples"), args.max_length or run.get("max_length")
        if not (dataset and samples and max_length):
            raise ValueError(f"{args.run} has no run_metrics.json naming its dataset, eval_samples "
                             f"and max_length: give them as options")
        stage = Path(run.get("stage") or ".")
        for folder in (args.run.resolve().parents):  # relative to the stage, as train.py saw it
            if not Path(dataset).is_absolute() and (folder / stage / dataset).exists():
                dataset = str(folder / stage / dataset)
                break
        rows = load_split(dataset, "validation", samples)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(args.run, device_map=device)
        tokenizer = AutoTokenizer.from_pretrained(args.run)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    scores, answers = answer_quality(model, tokenizer, rows, max_length, device)
    write_answers(args.run, rows, answers, RESCORED_FILE)
    print(f"exact match {scores['exact_match']:.1f}  F1 {scores['f1']:.1f}  ({len(rows)} validation "
          f"questions of {dataset}; answers in {args.run / RESCORED_FILE})")


if __name__ == "__main__":
    main()
