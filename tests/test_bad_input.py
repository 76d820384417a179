"""Bad input gets a one-line reason naming the file or value, a non-zero exit, no traceback,
before any training starts."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tiny_args
from test_stages import free_port


def train(stage, tiny, tmp_path, *extra, launcher=False, **overrides):
    args = tiny_args(tiny, output_dir=tmp_path / "out", **overrides) + list(extra)
    cmd = ([str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "1",
            "--master_port", str(free_port())] if launcher else [sys.executable])
    return subprocess.run(cmd + ["train.py"] + args, cwd=ROOT / stage, capture_output=True,
                          text=True, timeout=300)


def assert_refused(proc, *words):
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if "error: " in line]
    assert errors, output[-2000:]
    for word in words:
        assert word in errors[0], errors[0]
    assert "'train_runtime'" not in output  # refused before training


def write_data(tmp_path, tiny, train_rows):
    """A data folder with these train rows and the tiny validation file."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(train_rows)
    shutil.copy(tiny / "data" / "validation.jsonl", data)
    return data


def good_rows(tiny):
    return [json.loads(line) for line in (tiny / "data" / "train.jsonl").read_text().splitlines()]


def test_missing_dataset_folder(tiny, tmp_path):
    assert_refused(train("baseline", tiny, tmp_path, dataset_name_or_path="./no-such-data"),
                   "./no-such-data", "does not exist")


def test_row_without_answers(tiny, tmp_path):
    rows = good_rows(tiny)
    rows[3]["answers"] = {"text": [], "answer_start": []}
    data = write_data(tmp_path, tiny, "".join(json.dumps(r) + "\n" for r in rows))
    assert_refused(train("baseline", tiny, tmp_path, dataset_name_or_path=data),
                   "train.jsonl", "row 4", "no answer")


def test_file_that_is_not_squad(tiny, tmp_path):
    rows = [{"text": "just some text"}] * 40
    data = write_data(tmp_path, tiny, "".join(json.dumps(r) + "\n" for r in rows))
    assert_refused(train("baseline", tiny, tmp_path, dataset_name_or_path=data),
                   "train.jsonl", "row 1", "question")


def test_file_that_is_not_json(tiny, tmp_path):
    data = write_data(tmp_path, tiny, "question,context,answer\nwho,me,I\n")
    assert_refused(train("baseline", tiny, tmp_path, dataset_name_or_path=data),
                   "train.jsonl", "not JSON")


def test_nested_squad_json_is_read(tiny, tmp_path):
    """The original SQuAD layout (articles > paragraphs > qas) trains like the row layout."""
    rows = good_rows(tiny)
    nested = {"data": [{"title": "tiny", "paragraphs": [
        {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"], "answers": [
            {"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"],
                                                           r["answers"]["answer_start"])]}]}
        for r in rows]}]}
    data = tmp_path / "data"
    data.mkdir()
    (data / "train-v1.1.json").write_text(json.dumps(nested))
    shutil.copy(tiny / "data" / "validation.jsonl", data)
    proc = train("baseline", tiny, tmp_path, dataset_name_or_path=data, num_train_epochs=1)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_subset_larger_than_the_data(tiny, tmp_path):
    assert_refused(train("baseline", tiny, tmp_path, train_samples=1000),
                   "1000", "train", "only 64")


def test_missing_model_folder(tiny, tmp_path):
    assert_refused(train("baseline", tiny, tmp_path, model_name_or_path="./no-such-model"),
                   "./no-such-model")


@pytest.mark.parametrize("content, words", [
    (None, ["no-such.json", "does not exist"]),
    ("{ not json", ["bad.json", "not valid JSON"]),
    ('{"zero_optimization": {"stage": 4}}', ["bad.json", "stage", "4"]),
])
def test_bad_deepspeed_config(tiny, tmp_path, content, words):
    config = tmp_path / "bad.json"
    if content is not None:
        config.write_text(content)
    path = config if content is not None else tmp_path / "no-such.json"
    assert_refused(train("deepspeed-single-gpu", tiny, tmp_path, "--deepspeed", str(path)), *words)


@pytest.mark.parametrize("extra, words", [
    (["--compile_blocks", "True"], ["--compile_blocks", "--fast_path True"]),
    (["--fast_path", "True", "--compile_blocks", "True", "--deepspeed", "ds_zero3.json"],
     ["--compile_blocks", "ZeRO-3"]),
    (["--fast_path", "True", "--compile_blocks", "True", "--gradient_accumulation_steps", "4"],
     ["--compile_blocks", "--gradient_accumulation_steps 1"]),
])
def test_compile_blocks_where_it_does_not_apply(tiny, tmp_path, extra, words):
    assert_refused(train("deepspeed-single-gpu", tiny, tmp_path, *extra), *words)


def test_deepspeed_config_contradicting_the_trainer(tiny, tmp_path):
    config = json.loads((ROOT / "deepspeed-single-gpu" / "ds_zero2.json").read_text())
    config["gradient_clipping"] = 0.5  # the Trainer's max_grad_norm is 1.0
    config["optimizer"]["params"]["lr"] = 1e-3  # the Trainer's learning rate is 2e-3 here
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(config))
    assert_refused(train("deepspeed-single-gpu", tiny, tmp_path, "--deepspeed", str(path),
                         launcher=True), "edited.json", "gradient_clipping=0.5", "max_grad_norm=1.0",
                   "lr=0.001")


def test_output_folder_holding_another_models_checkpoints(tiny, tmp_path):
    other = tmp_path / "out" / "checkpoint-4"
    other.mkdir(parents=True)
    config = json.loads((tiny / "model" / "config.json").read_text())
    config["hidden_size"] = 128
    (other / "config.json").write_text(json.dumps(config))
    (other / "trainer_state.json").write_text("{}")
    assert_refused(train("baseline", tiny, tmp_path), "checkpoint-4", "another model")
    assert (other / "config.json").is_file()  # nothing of the user's is touched


# train.py started as `python train.py`, on a machine that reports a CUDA GPU of the given
# compute capability (this CPU machine has none; nothing else of CUDA is touched before the check)
OLD_GPU = """
import sys, torch
torch.cuda.is_available = lambda: True
torch.cuda.get_device_capability = lambda device=None: (5, 2)
torch.cuda.get_device_name = lambda device=None: "Tesla M60"
sys.argv[0] = "train.py"
import train
train.main(sys.argv[1:])
"""


def test_fp16_on_a_gpu_without_it(tiny, tmp_path):
    args = tiny_args(tiny, output_dir=tmp_path / "out") + ["--fp16", "True"]
    proc = subprocess.run([sys.executable, "-c", OLD_GPU, *args], cwd=ROOT / "baseline",
                          capture_output=True, text=True, timeout=300)
    assert_refused(proc, "fp16", "compute capability 6.0", "Tesla M60", "5.2")
    assert not (tmp_path / "out").exists()


def test_prompt_longer_than_max_length_is_truncated_and_counted(tiny, tmp_path):
    proc = train("baseline", tiny, tmp_path, max_length=24, num_train_epochs=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = re.findall(r"^(train|validation): (\d+) of (\d+) examples are longer than 24 tokens "
                        r"and were truncated$", proc.stdout, re.M)
    assert [(split, int(n)) for split, _, n in counts] == [("train", 32), ("validation", 8)]
    assert all(0 < int(truncated) <= int(n) for _, truncated, n in counts)
