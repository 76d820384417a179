"""SQuAD rows -> `Question: ... Context: ... Answer: ...` texts, tokenized for causal-LM training.

The rows come from the hub's `squad` (the default) or a local folder (workshop/squad.py reads
and checks them, in any of SQuAD's layouts, and writes the prompt).
"""
from dataclasses import dataclass

from datasets import Dataset

from workshop.squad import fitted_ids, load_split


def tokenize(rows, tokenizer, max_length, pad_to_max_length):
    """Input ids, attention mask and labels for each row; returns (Dataset, contexts shortened).

    Labels are the input ids (the model learns to continue the text) with padding set to
    -100, the index the loss ignores: otherwise the model is also trained to predict pad
    after pad, which dilutes the loss with easy tokens and teaches nothing. A text longer than
    max_length loses the end of its context, never its question or answer (fitted_ids).
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
    questions: list  # the validation rows, whose answers are scored
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
