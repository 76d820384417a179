"""Bad input gets a one-line reason naming the option or file and what to do, a non-zero exit,
no traceback, before any training step; nothing a user saved is changed. Never silently
wrong: a run that would train on something else than asked is refused, not run."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, in_process, rank_environments, tiny_args

from workshop.arguments import parse  # noqa: E402  options are checked where they are parsed
from workshop.settings import stage_settings  # noqa: E402


def train(stage, tiny, tmp_path, *extra, launcher=False, own_process=False, **overrides):
    """train.py on these arguments: in this process (in_process), or end to end in its own
    (own_process: python train.py) or as the rank DeepSpeed's launcher starts (launcher), for
    the exit status."""
    output_dir = Path(overrides.get("output_dir", tmp_path / "out"))
    args = tiny_args(tiny, **{"output_dir": output_dir, **overrides}) + list(extra)
    made_here = not (ROOT / stage / output_dir).exists()  # a relative one: the stage's
    start = time.monotonic()
    if launcher or own_process:
        proc = subprocess.run([sys.executable, "train.py"] + args, cwd=ROOT / stage, capture_output=True,
                              env=rank_environments(1)[0] if launcher else None, text=True, timeout=300)
    else:
        proc = subprocess.CompletedProcess(args, *in_process(args, stage))
    proc.seconds = time.monotonic() - start
    proc.folder_left = made_here and (ROOT / stage / output_dir).exists()
    return proc


def parsed(tiny, tmp_path, *extra, **overrides):
    """The baseline's settings under its command line: the arguments, or the refusal's text."""
    argv = tiny_args(tiny, **{"output_dir": tmp_path / "out", **overrides}) + list(extra)
    try:
        return parse(stage_settings("baseline"), argv)
    except (ValueError, SystemExit) as e:
        return f"error: {e}" if isinstance(e, ValueError) else str(e.code)


def assert_refused_on_parsing(result, *words):
    assert isinstance(result, str) and result.startswith("error: "), result
    assert "\n" not in result
    for word in words:
        assert word in result, result


def assert_refused(proc, *words):
    """One `error:` line, the last one printed, naming *words; no traceback, no training."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(set(errors)) == 1, output[-2000:]  # one reason (each rank may say it)
    ours = [line for line in proc.stderr.splitlines() if not re.match(r"\[\d{4}-", line)]
    assert ours[-1] == errors[0]  # the last line, but for the deepspeed launcher's own
    for word in words:
        assert word in errors[0], errors[0]
    assert "'loss'" not in output and "'train_runtime'" not in output  # before any step
    assert not getattr(proc, "folder_left", False), "a refused run left the output folder it made"
    print(f"{getattr(proc, 'seconds', 0):.1f} s: {errors[0]}")


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
    (None, ["no-such.json", "no such file"]),
    ("{ not json", ["bad.json", "not valid JSON"]),
    ('{"zero_optimization": {"stage": 4}}', ["bad.json", "stage", "4"]),
    ('{"zero_optimization": {"stage": true}}', ["bad.json", "stage", "True"]),
])
def test_bad_deepspeed_config(tiny, tmp_path, content, words):
    config = tmp_path / "bad.json"
    if content is not None:
        config.write_text(content)
    path = config if content is not None else tmp_path / "no-such.json"
    assert_refused(train("deepspeed-single-gpu", tiny, tmp_path, "--deepspeed", str(path)), *words)


@pytest.mark.parametrize("extra, words", [
    (["--compile_blocks", "True"], ["--compile_blocks", "--fast_path True"]),
    (["--fast_path", "True", "--compile_blocks", "True", "--deepspeed",
      str(ROOT / "deepspeed-single-gpu" / "ds_zero3.json")], ["--compile_blocks", "ZeRO-3"]),
    (["--fast_path", "True", "--compile_blocks", "True", "--gradient_accumulation_steps", "4"],
     ["--compile_blocks", "--gradient_accumulation_steps 1"]),
])
def test_compile_blocks_where_it_does_not_apply(tiny, tmp_path, extra, words):
    assert_refused_on_parsing(parsed(tiny, tmp_path, *extra), *words)


def test_deepspeed_config_contradicting_the_trainer(tiny, tmp_path):
    config = json.loads((ROOT / "deepspeed-single-gpu" / "ds_zero2_offload.json").read_text())
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


def test_fp16_on_a_gpu_without_it(tiny, tmp_path, monkeypatch):
    """On a machine that reports a CUDA GPU of compute capability 5.2 (this CPU machine has
    none; nothing else of CUDA is touched before the check)."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (5, 2))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla M60")
    assert_refused(train("baseline", tiny, tmp_path, "--fp16", "True", use_cpu=False),
                   "fp16", "compute capability 6.0", "Tesla M60", "5.2")
    assert not (tmp_path / "out").exists()


def test_prompt_longer_than_max_length_loses_the_end_of_its_context(tiny, tmp_path):
    """Not the end of the text: that would train on rows without their answers."""
    proc = train("baseline", tiny, tmp_path, max_length=40, num_train_epochs=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = re.findall(r"^(train|validation): (\d+) of (\d+) contexts were shortened to fit "
                        r"--max_length 40 \(question and answer kept whole\)$", proc.stdout, re.M)
    assert [(split, int(n)) for split, _, n in counts] == [("train", 32), ("validation", 8)]
    metrics = json.loads((tmp_path / "out" / "run_metrics.json").read_text())
    assert metrics["shortened_contexts"] == {split: int(k) for split, k, _ in counts}
    from transformers import AutoTokenizer
    from workshop.squad import fitted_ids, load_split
    tokenizer = AutoTokenizer.from_pretrained(tiny / "model")
    for row in load_split(tiny / "data", "train", 32):
        question, answer = row["question"], row["answers"]["text"][0]
        text = tokenizer.decode(fitted_ids(tokenizer, row, 40, answer)[0])
        assert text.startswith(f"Question: {question} Context: ")
        assert text.endswith(f" Answer: {answer}</s>")


def test_max_length_too_short_for_question_and_answer(tiny, tmp_path):
    assert_refused(train("baseline", tiny, tmp_path, max_length=8), "--max_length 8", "too short")


@pytest.mark.parametrize("option, value", [
    ("max_length", 0), ("max_length", -5), ("train_samples", 0), ("train_samples", -1),
    ("eval_samples", 0), ("per_device_train_batch_size", 0), ("per_device_eval_batch_size", 0),
    ("gradient_accumulation_steps", 0), ("learning_rate", -1e-3), ("learning_rate", 0),
    ("num_train_epochs", 0), ("num_train_epochs", -1), ("save_minutes", 0),
    ("weight_decay", -0.1), ("save_total_limit", 0), ("ddp_timeout", 0), ("profile_steps", -1)])
def test_numbers_out_of_range(tiny, tmp_path, option, value):
    assert_refused_on_parsing(parsed(tiny, tmp_path, **{option: value}), f"--{option} {value}")


def test_a_number_out_of_range_through_train_py(tiny, tmp_path):
    """End to end, for the exit status and the last line."""
    assert_refused(train("baseline", tiny, tmp_path, num_train_epochs=0, own_process=True),
                   "--num_train_epochs 0")
    assert not (tmp_path / "out").exists()


def test_misspelled_option_names_the_right_one(tiny, tmp_path):
    assert_refused_on_parsing(parsed(tiny, tmp_path, "--lerning_rate", "1e-4"),
                              "--lerning_rate: did you mean --learning_rate?")


def test_output_dir_that_is_a_file(tiny, tmp_path):
    (tmp_path / "out").write_text("my notes")
    assert_refused_on_parsing(parsed(tiny, tmp_path), "--output_dir", "is a file")
    assert (tmp_path / "out").read_text() == "my notes"


def test_an_abbreviated_option_means_what_the_full_name_means(tiny, tmp_path):
    """The fast path's defaults are a layer under the command line, whatever its spelling."""
    for spelling in (["--per_device_train_b", "8"], ["--per_device_train_batch_size=8"]):
        args, settings, _ = parsed(tiny, tmp_path, "--fast_path", "True", *spelling)
        assert args.fast_path and settings["per_device_train_batch_size"] == 8
        assert settings["gradient_accumulation_steps"] == 1  # the fast path's, not given
    args, settings, _ = parsed(tiny, tmp_path, "--fast_p", "True")
    assert settings["per_device_train_batch_size"] == 16 and args.pad_to_max_length is False


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_no_gpu_and_no_use_cpu(tiny, tmp_path):
    """A GPU job that sees no GPU is a broken install or a wrong partition: it stops."""
    assert_refused(train("baseline", tiny, tmp_path, use_cpu=False), "no CUDA GPU is visible",
                   "--gres=gpu:1", "--use_cpu True")


def test_deepspeed_stage_without_its_launcher(tiny, tmp_path):
    assert_refused(train("deepspeed-single-gpu", tiny, tmp_path, "--deepspeed", "ds_zero2.json"),
                   "--deepspeed ds_zero2.json", "deepspeed --num_gpus 1 train.py")


def test_dataset_given_as_a_file(tiny, tmp_path):
    assert_refused_on_parsing(parsed(tiny, tmp_path, dataset_name_or_path=tiny / "data" / "train.jsonl"),
                              "is a file", f"({tiny / 'data'})")


def test_model_path_without_dot_that_does_not_exist(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT / "baseline")
    assert_refused_on_parsing(parsed(tiny, tmp_path, model_name_or_path="prepared/bloom/model"),
                              "model folder prepared/bloom/model does not exist")
    # shaped like a hub id: the reason names both readings
    assert_refused_on_parsing(parsed(tiny, tmp_path, model_name_or_path="prepared/model"),
                              "prepared/model is not a folder here", "hub cache", "tools/prepare.py")


def test_folder_that_is_not_a_model(tiny, tmp_path):
    (tmp_path / "notes").mkdir()
    assert_refused_on_parsing(parsed(tiny, tmp_path, model_name_or_path=tmp_path / "notes"),
                              "has no config.json")


# ------------------------------------------------------------------ the output folder, resuming
@pytest.fixture
def stopped_run(runs):
    """The baseline's run stopped on request after step 1: checkpoint-1, to resume (the
    session's; tests change copies of it)."""
    out, proc = runs("baseline", stopped=True)
    assert proc.returncode == 75, proc.stderr[-3000:]
    return out


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "out")
    return tmp_path / "out"


def files_of(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_finished_run_is_not_run_again(tiny, tmp_path, runs):
    finished, first = runs("baseline")
    assert first.returncode == 0, first.stderr[-3000:]
    copy_of(finished, tmp_path)
    before = files_of(tmp_path / "out")
    assert_refused(train("baseline", tiny, tmp_path, learning_rate=1e-3), "holds a finished run",
                   str(tmp_path / "out" / "run_metrics.json"), "another --output_dir")
    assert files_of(tmp_path / "out") == before


def test_resuming_with_other_settings(tiny, tmp_path, stopped_run):
    out = copy_of(stopped_run, tmp_path)
    before = files_of(out)
    assert_refused(train("baseline", tiny, tmp_path, learning_rate=1e-3), "checkpoint-1",
                   "learning_rate=0.002 then, 0.001 now")
    assert files_of(out) == before


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_damaged_checkpoint_file(tiny, tmp_path, stopped_run, name):
    out = copy_of(stopped_run, tmp_path)
    damaged = out / "checkpoint-1" / name
    damaged.write_bytes(damaged.read_bytes()[:len(damaged.read_bytes()) // 2])
    before = files_of(out)
    assert_refused(train("baseline", tiny, tmp_path), str(damaged), "is damaged",
                   "move", "checkpoint-1")
    assert files_of(out) == before


def fake_deepspeed_checkpoint(run, tag_folder=True):
    """The stopped run's checkpoint made to look like DeepSpeed's (a global_step folder)."""
    checkpoint = run / "checkpoint-1"
    (checkpoint / "latest").write_text("global_step1")
    if tag_folder:
        (checkpoint / "global_step1").mkdir()
    return checkpoint


def test_baseline_refuses_a_deepspeed_checkpoint(tiny, tmp_path, stopped_run):
    checkpoint = fake_deepspeed_checkpoint(copy_of(stopped_run, tmp_path))
    assert_refused(train("baseline", tiny, tmp_path), str(checkpoint), "written by DeepSpeed")


def test_deepspeed_refuses_a_checkpoint_of_the_trainer_alone(tiny, tmp_path, stopped_run):
    checkpoint = copy_of(stopped_run, tmp_path) / "checkpoint-1"
    assert_refused(train("deepspeed-single-gpu", tiny, tmp_path, "--deepspeed", "ds_zero3.json",
                         launcher=True), str(checkpoint), "written without DeepSpeed")


def test_zero3_checkpoint_without_its_global_step_folder(tiny, tmp_path, stopped_run):
    checkpoint = fake_deepspeed_checkpoint(copy_of(stopped_run, tmp_path), tag_folder=False)
    assert_refused(train("deepspeed-single-gpu", tiny, tmp_path, "--deepspeed", "ds_zero3.json",
                         launcher=True), str(checkpoint / "global_step1"), "is missing")


@pytest.mark.parametrize("stage", ["deepspeed-multi-gpu", "deepspeed-multi-node"])
@pytest.mark.parametrize("variable, value, words", [
    ("GPUS", "two", "GPUS=two: give a number of processes"),
    ("COLLECTIVE_TIMEOUT", "1m", "COLLECTIVE_TIMEOUT=1m: give whole seconds")])
def test_job_variables_that_are_not_numbers(stage, variable, value, words):
    """The jobs' own knobs, refused in one line before anything starts (no SLURM here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({"GPUS": "1", variable: value})
    proc = subprocess.run(["bash", str(ROOT / stage / f"{stage}.slurm"), "--use_cpu", "True"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == f"error: {words}" \
        + (", e.g. GPUS=2" if variable == "GPUS" else ", e.g. 60"), proc.stdout + proc.stderr


# ------------------------------------------------------------------ third round: new kinds
@pytest.mark.parametrize("option, value", [
    ("learning_rate", "nan"), ("learning_rate", "inf"), ("weight_decay", "nan"),
    ("weight_decay", "inf")])
def test_numbers_that_are_not_finite(tiny, tmp_path, option, value):
    assert_refused_on_parsing(parsed(tiny, tmp_path, **{option: value}), f"--{option}", "must be a number")


@pytest.mark.parametrize("option, value", [
    ("train_samples", "abc"), ("per_device_train_batch_size", "3.5"), ("num_train_epochs", "three")])
def test_a_word_where_a_number_is_expected(tiny, tmp_path, option, value):
    assert_refused_on_parsing(parsed(tiny, tmp_path, **{option: value}), f"--{option}", repr(value))


def test_an_option_given_twice(tiny, tmp_path):
    """argparse keeps the last value without a word; a job that adds its own option to the
    user's would then be silently overridden."""
    assert_refused_on_parsing(parsed(tiny, tmp_path, "--learning_r", "1e-3"),  # tiny_args: 2e-3
                              "--learning_rate is given twice (0.002, then 0.001)")


@pytest.mark.parametrize("folder", ["model", "data"])
def test_output_folder_inside_what_the_run_reads(tiny, tmp_path, folder):
    """Writing checkpoints and the model into the model folder would replace the model the run
    started from."""
    copy = shutil.copytree(tiny / folder, tmp_path / folder)
    option = {"model": "model_name_or_path", "data": "dataset_name_or_path"}[folder]
    result = parsed(tiny, tmp_path, output_dir=copy / "out" if folder == "data" else copy, **{option: copy})
    assert_refused_on_parsing(result, "--output_dir", f"--{option}", "write over what it reads")


def test_output_folder_that_is_a_stage_folder(tiny, tmp_path):
    assert_refused_on_parsing(parsed(tiny, tmp_path, output_dir=ROOT / "baseline"), "is a stage folder")


def test_resume_asked_with_nothing_to_resume(tiny, tmp_path):
    """The Trainer would refuse too, after loading everything; --resume_from_checkpoint True
    was dropped before and the run started afresh."""
    assert_refused(train("baseline", tiny, tmp_path, resume_from_checkpoint=True),
                   "--resume_from_checkpoint True", "no complete checkpoint")
    assert not (tmp_path / "out").exists()


def test_resume_from_a_path_that_is_not_a_checkpoint(tiny, tmp_path):
    assert_refused_on_parsing(parsed(tiny, tmp_path, resume_from_checkpoint=tmp_path),
                              "--resume_from_checkpoint", "no checkpoint there")


def test_resume_from_another_runs_checkpoint_is_honoured_and_checked(tiny, tmp_path, stopped_run):
    """A checkpoint of another folder: resumed from (it trained from step 0 before), with the
    same settings check as a checkpoint of its own folder."""
    checkpoint = stopped_run / "checkpoint-1"
    assert_refused(train("baseline", tiny, tmp_path, learning_rate=1e-3, resume_from_checkpoint=checkpoint),
                   str(checkpoint), "learning_rate=0.002 then, 0.001 now")
    proc = train("baseline", tiny, tmp_path, resume_from_checkpoint=checkpoint, num_train_epochs=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {checkpoint} (step 1)" in proc.stdout
    assert json.loads((tmp_path / "out" / "run_metrics.json").read_text())["global_step"] == 4


def test_resume_from_a_finished_runs_folder(tiny, tmp_path, runs):
    finished, _ = runs("baseline")
    assert_refused(train("baseline", tiny, tmp_path, resume_from_checkpoint=finished),
                   "is a run's folder, not a checkpoint")


def test_two_runs_in_one_output_folder(tiny, tmp_path):
    """A live run's lock is refused, naming its host and process; a lock whose process is
    gone is taken over, and said so."""
    out = tmp_path / "out"
    out.mkdir()
    live = subprocess.Popen(["sleep", "60"])
    try:
        (out / ".run-lock").write_text(json.dumps(dict(host=socket.gethostname(), pid=live.pid, job=None)))
        before = files_of(out)
        assert_refused(train("baseline", tiny, tmp_path), "is in use by another run",
                       f"process {live.pid} on {socket.gethostname()}")
        assert files_of(out) == before
    finally:
        live.kill()
        live.wait()
    proc = train("baseline", tiny, tmp_path, num_train_epochs=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"taking over {out / '.run-lock'} from a run that is gone (process {live.pid}" in proc.stdout
    assert not (out / ".run-lock").exists()


def test_rows_whose_answer_is_not_in_their_context(tiny, tmp_path):
    rows = good_rows(tiny)
    for row in rows[:4]:  # more than 1%: the answers are in another field, say
        row["answers"] = {"text": ["Nowhere"], "answer_start": [0]}
    data = write_data(tmp_path, tiny, "".join(json.dumps(r) + "\n" for r in rows))
    assert_refused(train("baseline", tiny, tmp_path, dataset_name_or_path=data),
                   "train.jsonl", "4 of 32 rows", "rows 1, 2, 3, 4", "not in their context")


def test_answer_start_that_does_not_point_at_the_answer_is_counted(tiny, tmp_path):
    rows = good_rows(tiny)
    rows[2]["answers"]["answer_start"] = [0]
    data = write_data(tmp_path, tiny, "".join(json.dumps(r) + "\n" for r in rows))
    proc = train("baseline", tiny, tmp_path, dataset_name_or_path=data, num_train_epochs=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train.jsonl: 1 of 32 rows have an answer_start that does not point at the answer (rows 3)" in proc.stdout


def test_data_file_that_is_not_utf8(tiny, tmp_path):
    rows = good_rows(tiny)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:5]) + \
        json.dumps(dict(rows[5], context=rows[5]["context"] + " Café"), ensure_ascii=False) + "\n"
    data = write_data(tmp_path, tiny, "")
    (data / "train.jsonl").write_bytes(text.encode("latin-1"))
    assert_refused(train("baseline", tiny, tmp_path, dataset_name_or_path=data),
                   "train.jsonl is not UTF-8", "line 6", "iconv")


def test_data_file_with_a_byte_order_mark_is_read(tiny, tmp_path):
    data = write_data(tmp_path, tiny, "")
    (data / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + (tiny / "data" / "train.jsonl").read_bytes())
    proc = train("baseline", tiny, tmp_path, dataset_name_or_path=data, num_train_epochs=1)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_squads_other_answer_layout_is_read(tiny, tmp_path):
    """The original files' list of {text, answer_start} (as in a JSON list of rows)."""
    rows = good_rows(tiny)
    for row in rows:
        row["answers"] = [dict(text=t, answer_start=s) for t, s in
                          zip(row["answers"]["text"], row["answers"]["answer_start"])]
    data = write_data(tmp_path, tiny, json.dumps(rows))
    (data / "train.json").write_text((data / "train.jsonl").read_text())
    (data / "train.jsonl").unlink()
    proc = train("baseline", tiny, tmp_path, dataset_name_or_path=data, num_train_epochs=1)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_train_files_in_one_data_folder(tiny, tmp_path):
    """A new train.json beside the old train.jsonl: which one trains was silently the first."""
    data = write_data(tmp_path, tiny, (tiny / "data" / "train.jsonl").read_text())
    (data / "train.json").write_text("[]")
    assert_refused(train("baseline", tiny, tmp_path, dataset_name_or_path=data),
                   "2 train files", "train.jsonl, train.json")


def test_model_folder_without_tokenizer(tiny, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(tiny / "model" / "config.json", model)
    shutil.copy(tiny / "model" / "model.safetensors", model)
    assert_refused_on_parsing(parsed(tiny, tmp_path, model_name_or_path=model), "has no tokenizer",
                              "tools/prepare.py")


def test_model_config_that_is_not_json(tiny, tmp_path):
    model = shutil.copytree(tiny / "model", tmp_path / "model")
    (model / "config.json").write_text("{ cut off")
    assert_refused_on_parsing(parsed(tiny, tmp_path, model_name_or_path=model), "config.json",
                              "not a JSON object")


def test_fast_path_on_a_family_it_does_not_know(tiny, tmp_path):
    """The fast path computes the loss from the last hidden states and the output layer, as the
    families it names do; another (Granite scales its logits) is refused."""
    model = shutil.copytree(tiny / "model", tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "granite"}))
    assert_refused_on_parsing(parsed(tiny, tmp_path, "--fast_path", "True", model_name_or_path=model),
                              "--fast_path True", "granite", "drop --fast_path")


def test_a_length_whose_memory_the_machine_cannot_give(tiny, tmp_path):
    """Before: the allocator's "can't allocate 40000000000 bytes" traceback mid-step."""
    assert_refused(train("baseline", tiny, tmp_path, max_length=60000, num_train_epochs=1),
                   "the plan puts this run's peak at", "--max_length 60000", "tools/plan.py")


@pytest.mark.parametrize("stage, variable, value, words", [
    ("deepspeed-single-gpu", "MASTER_PORT", "abc", "MASTER_PORT=abc: give a port number"),
    ("deepspeed-multi-gpu", "GPUS", "0", "GPUS=0: give the processes to start, 1 to 2"),
    ("baseline", "PREPARED", "../prepard", "PREPARED=../prepard holds no model/ and data/")])
def test_job_settings_checked_as_options_are(stage, variable, value, words):
    """A job's environment settings, refused in one line before anything starts (no SLURM here;
    CUDA_VISIBLE_DEVICES stands for an allocation of two GPUs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({variable: value, "CUDA_VISIBLE_DEVICES": "0,1"})
    proc = subprocess.run(["bash", str(ROOT / stage / f"{stage}.slurm"), "--use_cpu", "True"],
                          env=env, capture_output=True, text=True, timeout=60)
    for name in re.findall(r"^run (\S+) on ", proc.stdout, re.M):  # the log it began, if any
        for path in (ROOT / stage / "log").glob(f"{name}*"):
            path.unlink()
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith(f"error: {words}"), proc.stdout + proc.stderr
