"""SQuAD exact match and F1 (workshop/answers.py) against hand-worked examples, and the whole
path on the tiny model: scores before and after fine-tuning in run_metrics.json, the answers
in answers.jsonl, the same scores again from the saved model folder on its own."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_args
from workshop.answers import exact_match, f1, normalize_answer, squad_scores


@pytest.mark.parametrize("text, normalized", [
    ("The Eiffel  Tower!", "eiffel tower"),      # lowercase, punctuation and "the" gone
    ("An apple, a day.", "apple day"),           # "an", "a" gone; spaces collapsed
    ("Denver's 3-2 win", "denvers 32 win"),      # punctuation removed inside words too
    ("theatre then", "theatre then"),            # articles only as whole words
])
def test_normalisation_is_the_official_one(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Denver Broncos", "Denver Broncos")
    assert not exact_match("Broncos", "Denver Broncos")
    # prediction {denver, broncos, won} vs reference {denver, broncos}: P 2/3, R 1 -> F1 0.8
    assert f1("Denver Broncos won", "the Denver Broncos") == pytest.approx(0.8)
    # P 1, R 1/2 -> 2/3
    assert f1("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
    # words count as often as both have them: "cat" once against "cat cat" -> P 1, R 1/2
    assert f1("the cat", "cat cat") == pytest.approx(2 / 3)
    assert f1("", "Denver") == 0.0 and f1("Carolina", "Denver") == 0.0


def test_best_reference_counts_then_mean_over_questions():
    predictions = ["Denver Broncos", "Carolina", "Santa Clara"]
    references = [["Denver Broncos", "The Broncos"], ["Carolina Panthers", "Panthers"],
                  ["Levi's Stadium"]]
    em, f = squad_scores(predictions, references)
    assert em == pytest.approx(100 / 3)                  # only the first matches exactly
    assert f == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)  # Carolina: best is 2/3, not 0


@pytest.fixture(scope="module")
def same_answer_data(tiny, tmp_path_factory):
    """The tiny data with one answer, "Tesk", to every question (and in every context, as an
    answer must be): learnable in 80 steps."""
    data = tmp_path_factory.mktemp("same-answer")
    for split in ("train", "validation"):
        rows = [json.loads(line) for line in (tiny / "data" / f"{split}.jsonl").read_text().splitlines()]
        (data / f"{split}.jsonl").write_text("".join(
            json.dumps({**row, "context": row["context"] + " Tesk", "answers": {
            "text": ["Tesk"], "answer_start": [len(row["context"]) + 1]}}) + "\n" for row in rows))
    return data


def test_fine_tuning_teaches_the_answer_and_the_saved_folder_scores_the_same(tiny, same_answer_data, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(tiny, dataset_name_or_path=same_answer_data, train_samples=64, eval_samples=8,
                     max_length=160, num_train_epochs=12, output_dir=out)
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT / "baseline",
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    quality = json.loads((out / "run_metrics.json").read_text())["answer_quality"]
    assert quality["before"] == dict(exact_match=0.0, f1=0.0, samples=8)
    assert quality["after"] == dict(exact_match=100.0, f1=100.0, samples=8)
    assert ("answers to 8 validation questions: exact match 0.0 -> 100.0, F1 0.0 -> 100.0 "
            "(before -> after training)") in proc.stdout
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["answer"] for a in answers] == ["Tesk"] * 8
    assert all(a["references"] == ["Tesk"] and a["question"] for a in answers)

    written = (out / "answers.jsonl").read_bytes()
    # the script on its own takes the run's data, rows and length from its run_metrics.json,
    # and leaves the run's answers.jsonl as it was
    proc = subprocess.run([sys.executable, "-m", "workshop.answers", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"exact match 100.0  F1 100.0  (8 validation questions of "
                                  f"{same_answer_data};")
    assert (out / "answers.jsonl").read_bytes() == written
    again = [json.loads(line) for line in (out / "answers-rescored.jsonl").read_text().splitlines()]
    assert [a["answer"] for a in again] == ["Tesk"] * 8


def test_the_script_refuses_a_folder_without_a_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workshop.answers", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: {tmp_path} holds no saved model (no config.json): give a finished run's folder")
