"""SQuAD rows: read from the hub or a local file in any of its layouts, checked, and turned into
the workshop's prompt `Question: ... Context: ... Answer:` (training and answering alike)."""
import json
from pathlib import Path

IGNORE_INDEX = -100  # the label of a token the loss leaves out (torch's cross_entropy's ignore_index)
# Local file names tried for each split, in order.
SPLIT_FILES = {"train": ["train.jsonl", "train.json", "train-v1.1.json"],
               "validation": ["validation.jsonl", "validation.json", "dev-v1.1.json"]}
# Rows whose answer is not in their context teach the model to make answers up, rows without a
# question to answer without one; a few are tolerated (SQuAD's own annotations hold some), more
# means the file is not what it claims.
CANNOT_TEACH_ALLOWED = 0.01


def prompt(row):
    """What the model sees before it answers; generation starts from here too."""
    return f"Question: {row['question']} Context: {row['context']} Answer:"


def is_local_path(name):
    """Whether a model or dataset name can only be a path (not a hub id `owner/name`)."""
    return str(name).startswith((".", "/", "~")) or str(name).count("/") > 1


def read_text(path):
    """A file's text; not UTF-8 is said with the file and the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not text
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path} is not UTF-8 text (line {line}, byte {e.start}): save it as "
                         f"UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_rows(path):
    """Rows of a local SQuAD file: JSON lines, a JSON list, or SQuAD's nested JSON."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        rows = []
        for i, line in enumerate(text.splitlines(), start=1):  # JSON lines: one row per line
            try:
                rows += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not JSON or JSON lines (line {i}: {e.msg})") from None
        return rows
    if isinstance(data, dict) and "data" in data:  # nested SQuAD: articles > paragraphs > qas
        try:
            return [{"id": qa.get("id"), "title": article.get("title", ""),
                     **{k: paragraph[k] for k in ["context"] if k in paragraph},
                     **{k: qa[k] for k in ("question", "answers") if k in qa}}
                    for article in data["data"] for paragraph in article["paragraphs"]
                    for qa in paragraph["qas"]]
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path} is not SQuAD's nested layout (data > paragraphs > qas; "
                             f"{type(e).__name__} {e})") from None
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not rows: is this a SQuAD file?")
    return data


def answers_of(row):
    """(texts, starts) of a row's answers in any layout: the hub's {"text": [...],
    "answer_start": [...]}, the original file's [{"text": ..., "answer_start": ...}, ...], or
    one answer: {"text": "...", "answer_start": 12}, ["..."], "..."."""
    answers = row["answers"]
    if isinstance(answers, dict):
        texts, starts = answers.get("text"), answers.get("answer_start")
    elif isinstance(answers, list) and all(isinstance(a, dict) for a in answers):
        texts, starts = [a.get("text") for a in answers], [a.get("answer_start") for a in answers]
    else:
        texts, starts = answers, None
    return as_list(texts), as_list(starts)


def as_list(value):
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def check_rows(rows, source):
    """Every row needs a question and a context that are text, and a non-empty answer. Rows
    that cannot teach what the prompt says (an answer not found in its context, an empty
    question) are counted, said, and refused beyond CANNOT_TEACH_ALLOWED of the rows."""
    misplaced, moved, unasked = [], [], []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{source}: row {i} is not a JSON object; is this a SQuAD file?")
        for key in ("question", "context", "answers"):
            if key not in row:
                raise ValueError(f"{source}: row {i} has no '{key}'; is this a SQuAD file?")
        for key in ("question", "context"):
            if not isinstance(row[key], str):
                raise ValueError(f"{source}: row {i}'s '{key}' is {json.dumps(row[key])[:60]}, not "
                                 f"text: every question and context must be a string")
        texts, starts = answers_of(row)
        if not texts or not all(isinstance(a, str) and a.strip() for a in texts):
            raise ValueError(f"{source}: row {i} has no answer text (answers: "
                             f"{json.dumps(row['answers'])[:80]})")
        row["answers"] = dict(text=texts, answer_start=starts)
        if not row["question"].strip():
            unasked.append(i)
        if not any(t in row["context"] for t in texts):
            misplaced.append(i)
        elif starts and not any(isinstance(s, int) and row["context"][s:s + len(t)] == t
                                for t, s in zip(texts, starts)):
            moved.append(i)
    for found, what, hint in (
            (unasked, "an empty question", "is the question in another field?"),
            (misplaced, "an answer that is not in their context", "is the answer in the right field?")):
        if len(found) > CANNOT_TEACH_ALLOWED * len(rows):
            raise ValueError(f"{source}: {'every row has' if len(found) == len(rows) else f'{len(found)} of {len(rows)} rows have'} "
                             f"{what} (rows {listing(found)}): {hint}")
    for found, what in ((unasked, "an empty question"), (misplaced, "an answer not found in their context"),
                        (moved, "an answer_start that does not point at the answer")):
        if found:  # the prompt uses the answer's text only: said, trained on as they are
            print(f"{source}: {len(found)} of {len(rows)} rows have {what} (rows {listing(found)})")


def listing(rows):
    return f"{', '.join(map(str, rows[:5]))}{', ...' if len(rows) > 5 else ''}"


def shared_rows(train_ids, validation_ids):
    """How many validation rows are train rows too (the same tokens: question, context, answer)."""
    train = set(map(tuple, train_ids))
    return sum(tuple(ids) in train for ids in validation_ids)


def memorised(count, total):
    """What an eval loss measures when `count` of the `total` validation rows are train rows."""
    return (f"{count} of {total} validation rows are train rows too (the same question, context "
            f"and answer): their eval loss measures what the model remembers, not how it answers "
            f"new questions; give validation rows it does not train on")


def not_here(name, what):
    """Why a hub id cannot be used with the hub off (compute nodes), and what to do."""
    return (f"{name} is not a folder here ({Path(name).resolve()} does not exist) and not on "
            f"this machine's hub cache, and the hub is off (HF_HUB_OFFLINE=1, as the jobs set "
            f"it): give the folder's path, or run `python tools/prepare.py --{what}_name_or_path "
            f"{name}` once on a machine with internet (the login node), then submit again")


def load_split(name_or_path, split, n_rows=None):
    """The first n_rows of a split (all of them for None), checked. A local folder holds a
    file per split; anything else is a hub id."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        files = [folder / f for f in SPLIT_FILES[split] if (folder / f).is_file()]
        if not files:
            raise ValueError(f"{folder} has no {split} file (looked for {', '.join(SPLIT_FILES[split])})")
        if len(files) > 1:
            raise ValueError(f"{folder} has {len(files)} {split} files ({', '.join(f.name for f in files)}): "
                             f"keep the one to train on, move the others away")
        source, rows = files[0], read_rows(files[0])
    else:
        from datasets import load_dataset
        from huggingface_hub import is_offline_mode
        source = f"{name_or_path}[{split}]"
        try:
            rows = load_dataset(name_or_path, split=split)
        except OSError as e:  # ConnectionError included
            raise ValueError(not_here(name_or_path, "dataset") if is_offline_mode() else
                             f"{source} could not be loaded ({str(e).splitlines()[0]})") from None
    n_rows = len(rows) if n_rows is None else n_rows
    if n_rows > len(rows):
        raise ValueError(f"asked for {n_rows} {split} rows but {source} has only {len(rows)}")
    rows = [dict(rows[i]) for i in range(n_rows)]
    check_rows(rows, source)
    return rows


def as_dataset(rows, split):
    """The rows' question, context and (first) answer as a datasets.Dataset kept in datasets'
    cache, named by their content: a map over it is cached there too, so that a node's other
    processes read what its first one made (TrainingArguments.main_process_first)."""
    from datasets import Dataset
    texts = [dict(question=r["question"], context=r["context"], answer=r["answers"]["text"][0]) for r in rows]
    return Dataset.from_generator(each, gen_kwargs=dict(rows=texts), split=split)


def each(rows):
    yield from rows


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
