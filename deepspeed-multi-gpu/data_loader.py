"""SQuAD rows -> `Question: ... Context: ... Answer: ...` texts, tokenized for causal-LM training.

The data can be the hub's `squad` (the default), or a local folder holding a train and
a validation file: JSON lines or a JSON list in the hub's row format, or the original
nested SQuAD JSON (`train-v1.1.json`, `dev-v1.1.json`).
"""
import json
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, load_dataset
from huggingface_hub import is_offline_mode

from config import not_here

# Local file names tried for each split, in order.
SPLIT_FILES = {"train": ["train.jsonl", "train.json", "train-v1.1.json"],
               "validation": ["validation.jsonl", "validation.json", "dev-v1.1.json"]}


def prompt(row):
    """What the model sees before it answers; generation starts from here too."""
    return f"Question: {row['question']} Context: {row['context']} Answer:"


def read_rows(path):
    """Rows of a local SQuAD file in any of the three layouts."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:  # JSON lines: one row per line
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not JSON or JSON lines ({e})") from None
    if isinstance(data, dict) and "data" in data:  # original nested SQuAD: articles > paragraphs > qas
        return [dict(id=qa["id"], title=article.get("title", ""), context=paragraph["context"],
                     question=qa["question"],
                     answers=dict(text=[a["text"] for a in qa["answers"]],
                                  answer_start=[a["answer_start"] for a in qa["answers"]]))
                for article in data["data"] for paragraph in article["paragraphs"]
                for qa in paragraph["qas"]]
    if isinstance(data, dict):
        data = [data]
    return data


def check_rows(rows, source):
    """Every row needs a question, a context and at least one non-empty answer."""
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{source}: row {i} is not a JSON object; is this a SQuAD file?")
        for key in ("question", "context", "answers"):
            if key not in row:
                raise ValueError(f"{source}: row {i} has no '{key}'; is this a SQuAD file?")
        answers = row["answers"].get("text") if isinstance(row["answers"], dict) else None
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise ValueError(f"{source}: row {i} has no answer text")


def load_split(name_or_path, split, n_rows=None):
    """The first n_rows of a split (all of them for None), checked. A local folder holds a
    file per split; anything else is a hub id (config.check_sources tells them apart)."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        files = [folder / f for f in SPLIT_FILES[split] if (folder / f).is_file()]
        if not files:
            raise ValueError(f"{folder} has no {split} file (looked for {', '.join(SPLIT_FILES[split])})")
        source, rows = files[0], read_rows(files[0])
    else:
        source = f"{name_or_path}[{split}]"
        try:
            rows = load_dataset(name_or_path, split=split)
        except OSError as e:  # ConnectionError included
            raise ValueError(not_here(name_or_path, "dataset") if is_offline_mode() else e) from None
    n_rows = len(rows) if n_rows is None else n_rows
    if n_rows > len(rows):
        raise ValueError(f"asked for {n_rows} {split} rows but {source} has only {len(rows)}")
    rows = [rows[i] for i in range(n_rows)]
    check_rows(rows, source)
    return rows


def fitted_ids(tokenizer, row, max_length, answer=None):
    """Token ids of the row's prompt (and ` answer</s>`), at most max_length long: a text that
    is too long loses the end of its context, never its question or its answer (cutting the
    end of the text would train on rows without their answer). Returns (ids, shortened)."""
    ending = f" {answer}{tokenizer.eos_token}" if answer is not None else ""
    ids = tokenizer(prompt(row) + ending, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_length:
        return ids, False
    context = tokenizer(row["context"], add_special_tokens=False)["input_ids"]
    keep = len(context) - (len(ids) - max_length)
    while keep > 0:  # token boundaries move a little when the text is tokenized again
        shorter = dict(row, context=tokenizer.decode(context[:keep]))
        ids = tokenizer(prompt(shorter) + ending, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_length:
            return ids, True
        keep -= len(ids) - max_length
    raise ValueError(f"--max_length {max_length} is too short: question {row['question']!r} and "
                     f"its answer alone take more tokens; raise --max_length")


def tokenize(rows, tokenizer, max_length, pad_to_max_length):
    """Input ids, attention mask and labels for each row; returns (Dataset, contexts shortened).

    Labels are the input ids (the model learns to continue the text) with padding set to
    -100, the index the loss ignores: otherwise the model is also trained to predict pad
    after pad, which dilutes the loss with easy tokens and teaches nothing.
    """
    fitted = [fitted_ids(tokenizer, row, max_length, row["answers"]["text"][0]) for row in rows]
    batch = tokenizer.pad({"input_ids": [ids for ids, _ in fitted]},
                          padding="max_length" if pad_to_max_length else False,
                          max_length=max_length)
    batch["labels"] = [[t if m else -100 for t, m in zip(ids_, mask)]
                       for ids_, mask in zip(batch["input_ids"], batch["attention_mask"])]
    return Dataset.from_dict(dict(batch)), sum(shortened for _, shortened in fitted)


@dataclass
class Datasets:
    train: Dataset
    validation: Dataset
    questions: list  # the validation rows, which answer_quality.py asks
    shortened: dict  # split -> how many contexts were cut to fit max_length
    longest: int  # tokens of the longest training example (without padding)


def build_datasets(args, tokenizer):
    """Train and validation datasets for the Trainer, and the validation rows they came from."""
    made, shortened, rows = {}, {}, None
    for split, n_rows in (("train", args.train_samples), ("validation", args.eval_samples)):
        rows = load_split(args.dataset_name_or_path, split, n_rows)
        made[split], shortened[split] = tokenize(rows, tokenizer, args.max_length,
                                                 args.pad_to_max_length)
        if shortened[split]:
            print(f"{split}: {shortened[split]} of {n_rows} contexts were shortened to fit "
                  f"--max_length {args.max_length} (question and answer kept whole)")
    longest = max(sum(mask) for mask in made["train"]["attention_mask"])
    return Datasets(made["train"], made["validation"], rows, shortened, longest)
