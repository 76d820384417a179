"""SQuAD rows -> `Question: ... Context: ... Answer: ...` texts, tokenized for causal-LM training.

The rows come from the hub's `squad` (the default) or a local folder (workshop/squad.py reads
and checks them, in any of SQuAD's layouts, and writes the prompt).
"""
from dataclasses import dataclass

from datasets import Dataset

from workshop.squad import IGNORE_INDEX, as_dataset, fitted_ids, load_split, prompt


def tokenize(columns, tokenizer, max_length, pad_to_max_length):
    """Input ids, attention mask and labels of a batch of rows (datasets' batched map: the
    fast tokenizer takes the whole batch in one call), and which rows were shortened.

    Labels are the input ids (the model learns to continue the text) with padding set to
    IGNORE_INDEX (-100), the label the loss ignores: otherwise the model is also trained to
    predict pad after pad, which dilutes the loss with easy tokens and teaches nothing. A text
    longer than max_length loses the end of its context, never its question or answer
    (fitted_ids, for those rows only).
    """
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    texts = [f"{prompt(row)} {row['answer']}{tokenizer.eos_token}" for row in rows]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    shortened = [len(row_ids) > max_length for row_ids in ids]
    ids = [fitted_ids(tokenizer, row, max_length, row["answer"])[0] if cut else row_ids
           for row, row_ids, cut in zip(rows, ids, shortened)]
    batch = tokenizer.pad({"input_ids": ids}, padding="max_length" if pad_to_max_length else False,
                          max_length=max_length)
    batch["labels"] = [[t if m else IGNORE_INDEX for t, m in zip(ids_, mask)]
                       for ids_, mask in zip(batch["input_ids"], batch["attention_mask"])]
    return {**batch, "shortened": shortened}


@dataclass
class Datasets:
    train: Dataset
    validation: Dataset
    questions: list  # the validation rows, whose answers are scored
    shortened: dict  # split -> how many contexts were cut to fit max_length
    longest: int  # tokens of the longest training example (without padding)


def build_datasets(args, tokenizer, training_args):
    """Train and validation datasets for the Trainer, and the validation rows they came from.
    Each node's first process reads and tokenizes them; the others then read its result from
    datasets' cache."""
    rows, made, shortened = {}, {}, {}
    with training_args.main_process_first(desc="tokenizing"):
        for split, n_rows in (("train", args.train_samples), ("validation", args.eval_samples)):
            rows[split] = load_split(args.dataset_name_or_path, split, n_rows)
            texts = as_dataset(rows[split], split)
            tokenized = texts.map(tokenize, batched=True, remove_columns=texts.column_names,
                                  desc=f"tokenizing {split}", fn_kwargs=dict(
                                      tokenizer=tokenizer, max_length=args.max_length,
                                      pad_to_max_length=args.pad_to_max_length))
            shortened[split] = sum(tokenized["shortened"])
            made[split] = tokenized.remove_columns("shortened")
            if shortened[split]:
                print(f"{split}: {shortened[split]} of {n_rows} contexts were shortened to fit "
                      f"--max_length {args.max_length} (question and answer kept whole)")
    longest = max(sum(mask) for mask in made["train"]["attention_mask"])
    return Datasets(made["train"], made["validation"], rows["validation"], shortened, longest)
