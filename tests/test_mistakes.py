"""Never silently wrong, generated: mistakes made by kind (a field of the wrong type, a null, an
empty value, a count at its boundary, a full disk, a signal), not one test per input, so that the
suite finds the next input of a kind. Each ends in one `error:` line naming what to fix, or runs
and says what it did where that would otherwise mislead; none prints a traceback (`pytest -s`
prints each refusal's time). The earlier rounds' inputs are tests/test_bad_input.py's, whose
helpers these use."""
import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, job_without_slurm, tiny_args
from test_bad_input import assert_refused, assert_refused_on_parsing, good_rows, parsed, train, write_data

def timed_refusal(proc, *words, launched=False):
    """A refusal, with the seconds it took (`pytest -s` prints them; how long refusals take is
    measured on a quiet machine, not asserted while the suite's workers share its cores)."""
    assert_refused(proc, *words)
    print(f"refused after {proc.seconds:.1f} s{' (as a DeepSpeed rank)' * launched}")


def assert_ran(proc, *said):
    """The run completed, without a traceback, and said each of `said`."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in output, output[-3000:]
    for words in said:
        assert words in output, output[-3000:]


# ------------------------------------------------------------------ data: every field, every kind
ODD_VALUES = {"null": None, "number": 42, "fraction": 4.5, "boolean": True, "empty list": [],
              "object": {"a": 1}, "empty text": "", "blank text": "   "}
FIELDS = ("question", "context", "answers", "answers.text", "answers.answer_start")


def with_value(row, field, value):
    row = json.loads(json.dumps(row))
    *parents, name = field.split(".")
    for parent in parents:
        row = row[parent]
    row[name] = value
    return row


@pytest.mark.parametrize("scope", ["row 3", "every row"])
@pytest.mark.parametrize("kind", ODD_VALUES)
@pytest.mark.parametrize("field", FIELDS)
def test_a_field_of_another_kind(tiny, tmp_path, field, kind, scope):
    """Refused in one line naming the file and the row, or read as meant: each row then has a
    question and a context that are text and answers that are non-empty text, and every row that
    cannot teach what the prompt says (no question, an answer not in its context) is said."""
    from workshop.squad import load_split
    rows = good_rows(tiny)
    rows = [with_value(r, field, ODD_VALUES[kind]) if scope == "every row" or i == 2 else r
            for i, r in enumerate(rows)]
    data = write_data(tmp_path, tiny, "".join(json.dumps(r) + "\n" for r in rows))
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            read = load_split(data, "train", len(rows))
    except ValueError as e:
        assert "\n" not in str(e) and str(data / "train.jsonl") in str(e), str(e)
        assert re.search(r"\brow 3\b|every row|rows? [\d, .]+", str(e)), str(e)
        return
    for row in read:
        assert isinstance(row["question"], str) and isinstance(row["context"], str), row
        assert row["answers"]["text"] and all(isinstance(t, str) and t.strip() for t in row["answers"]["text"])
    unteachable = [i for i, r in enumerate(read, start=1) if not r["question"].strip()
                   or not any(t in r["context"] for t in r["answers"]["text"])]
    for i in unteachable:
        assert re.search(rf"rows? .*\b{i}\b", said.getvalue()), (i, said.getvalue())


def test_a_row_with_a_null_context_through_train_py(tiny, tmp_path):
    rows = good_rows(tiny)
    rows[2]["context"] = None
    data = write_data(tmp_path, tiny, "".join(json.dumps(r) + "\n" for r in rows))
    timed_refusal(train("baseline", tiny, tmp_path, dataset_name_or_path=data), "train.jsonl",
                  "row 3's 'context' is null", "must be a string")


def test_every_question_empty_through_train_py(tiny, tmp_path):
    rows = [dict(r, question="") for r in good_rows(tiny)]
    data = write_data(tmp_path, tiny, "".join(json.dumps(r) + "\n" for r in rows))
    timed_refusal(train("baseline", tiny, tmp_path, dataset_name_or_path=data), "train.jsonl",
                  "every row has an empty question")


def test_validation_rows_that_are_train_rows_are_said(tiny, tmp_path):
    """The run is legitimate; its eval loss would mislead: said as the data is read and again
    in the summary, and counted in run_metrics.json."""
    data = write_data(tmp_path, tiny, (tiny / "data" / "train.jsonl").read_text())
    shutil.copy(data / "train.jsonl", data / "validation.jsonl")
    proc = train("baseline", tiny, tmp_path, dataset_name_or_path=data, num_train_epochs=1)
    assert_ran(proc)
    warning = ("warning: 8 of 8 validation rows are train rows too (the same question, context and "
               "answer): their eval loss measures what the model remembers")
    assert (proc.stdout + proc.stderr).count(warning) == 2, proc.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "run_metrics.json").read_text())["validation_rows_in_train"] == 8


# ------------------------------------------------------------------ options: every number, every kind
NUMBERS = ("train_samples", "eval_samples", "max_length", "per_device_train_batch_size",
           "per_device_eval_batch_size", "gradient_accumulation_steps", "learning_rate",
           "num_train_epochs", "max_steps", "logging_steps", "save_steps", "eval_steps",
           "save_total_limit", "warmup_steps", "weight_decay", "save_minutes", "ddp_timeout",
           "profile_steps", "length_multiple")
ODD_NUMBERS = ("0", "-1", "0.5", "nan", "inf", "-inf", "abc", "1e12")


@pytest.mark.parametrize("option", NUMBERS)
def test_every_number_at_its_edges(tiny, tmp_path, option):
    """Each odd value of each numeric option: refused in one line naming it, or accepted by the
    checks and by the Trainer's own arguments (which the run builds next)."""
    from transformers import TrainingArguments
    for value in ODD_NUMBERS:
        result = parsed(tiny, tmp_path, **{option: value})
        if isinstance(result, str):
            assert_refused_on_parsing(result, f"--{option}")
            continue
        try:
            TrainingArguments(**result[1])
        except ValueError as e:  # the run prints this as its one line
            assert "\n" not in str(e).strip(), (option, value, str(e))


BOUNDARY_RUNS = {  # legitimate settings at a boundary of the run's counts, and what each says
    "one train row, batch 4": (dict(train_samples=1), []),
    "one validation row": (dict(eval_samples=1), []),
    "a batch above the train rows": (dict(per_device_train_batch_size=64), []),
    "accumulation above an epoch's batches": (dict(gradient_accumulation_steps=64), []),
    "logging interval above the run": (dict(logging_steps=1000), ["--logging_steps 1000 is above an epoch's"]),
    "logging interval as a fraction": (dict(logging_steps=0.5), []),
    "an epoch count that is one step": (dict(num_train_epochs=0.1), ["--num_train_epochs 0.1 trains 1 optimizer step"]),
    "one step by max_steps": (dict(max_steps=1), []),
    "a checkpoint every step, one kept": (dict(save_strategy="steps", save_steps=1, save_total_limit=1), []),
}


@pytest.mark.parametrize("case", BOUNDARY_RUNS)
def test_counts_at_their_boundaries_run_and_say_what_they_did(tiny, tmp_path, case):
    """Each trains to its end, its summary holds numbers where it evaluated (no "-" where a
    loss was logged), its steps are those planned, and where it rounds or reinterprets it says so."""
    overrides, said = BOUNDARY_RUNS[case]
    proc = train("baseline", tiny, tmp_path, **overrides)
    assert_ran(proc, *said)
    metrics = json.loads((tmp_path / "out" / "run_metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["global_step"] == metrics["max_steps"]
    assert metrics["epochs"], "no epoch evaluated"
    for epoch in metrics["epochs"]:
        assert math.isfinite(epoch["train_loss"]) and math.isfinite(epoch["eval_loss"]), epoch
        assert f"epoch {epoch['epoch']}: train_loss {epoch['train_loss']:.4f}" in proc.stdout
    assert len(list((tmp_path / "out").glob("checkpoint-*"))) <= (overrides.get("save_total_limit") or 2)


def test_a_learning_rate_that_diverges_stops_at_once(tiny, tmp_path):
    """Accepted (a number above 0), but the loss is soon not a number: stopped, said."""
    proc = train("baseline", tiny, tmp_path, learning_rate=1e30)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert output.strip().splitlines()[-1].startswith("error: the grad norm became nan at step 2: "
                                                      "the run diverged; lower --learning_rate (1e+30 now)")
    assert json.loads((tmp_path / "out" / "run_metrics.json").read_text())["status"] == "failed"


# ------------------------------------------------------------------ the output folder, resuming
@pytest.mark.parametrize("kind", ["a link to nowhere", "under a file"])
def test_output_folders_that_cannot_be(tiny, tmp_path, kind):
    out = tmp_path / "out"
    if kind == "a link to nowhere":
        out.symlink_to(tmp_path / "gone")
        words = ["is a link to", "which does not exist", "mkdir -p"]
    else:
        (tmp_path / "notes").write_text("mine")
        out = tmp_path / "notes" / "out"
        words = ["cannot be made", "is a file"]
    assert_refused_on_parsing(parsed(tiny, tmp_path, output_dir=out), f"--output_dir {out}", *words)


CHECKPOINT_STATES = {  # trainer_state.json as another version or a damaged file leaves it
    "a field this version does not know": (lambda s: {**s, "from_a_newer_version": 1},
                                           ["does not know (from_a_newer_version)", "transformers 9.9.9 wrote it",
                                            "pip install transformers==9.9.9"]),
    "a list": (lambda s: [s], ["is damaged"]),
    "a step that is text": (lambda s: {**s, "global_step": "one"}, ["is damaged", "global_step"]),
    "a log that is not a list": (lambda s: {**s, "log_history": None}, ["is damaged", "log_history"]),
}


@pytest.mark.parametrize("case", CHECKPOINT_STATES)
def test_checkpoint_states_another_version_or_damage_left(tiny, tmp_path, runs, case):
    out, first = runs("baseline", stopped=True)
    assert first.returncode == 75, first.stderr[-3000:]
    out = shutil.copytree(out, tmp_path / "out")
    change, words = CHECKPOINT_STATES[case]
    state = out / "checkpoint-1" / "trainer_state.json"
    state.write_text(json.dumps(change(json.loads(state.read_text()))))
    config = out / "checkpoint-1" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "transformers_version": "9.9.9"}))
    timed_refusal(train("baseline", tiny, tmp_path), str(state), *words)


# ------------------------------------------------------------------ DeepSpeed configs, every kind
def deepspeed_config(tmp_path, base, change):
    config = json.loads((ROOT / "deepspeed-single-gpu" / base).read_text())
    change(config.setdefault("zero_optimization", {}), config)
    path = tmp_path / f"edited-{base}"
    path.write_text(json.dumps(config))
    return path


REFUSED_BEFORE_DEEPSPEED_STARTS = {  # DeepSpeed trains on without a word, not as the config says,
    # or refuses them only once the model is loaded, or as its config class with a traceback
    "offload_param at stage 2": ("ds_zero2.json", lambda z, c: z.update(offload_param={"device": "cpu"}),
                                 ["offload_param is ZeRO-3's", "stage 2"]),
    "offload_optimizer at stage 0": ("ds_config.json", lambda z, c: z.update(offload_optimizer={"device": "cpu"}),
                                     ["offload_optimizer needs ZeRO", "stage 0"]),
    "NVMe parameter offload without nvme_path": (
        "ds_zero3_offload.json", lambda z, c: z.update(offload_param={"device": "nvme"}),
        ["offload_param to nvme needs its nvme_path"]),
    "NVMe optimizer offload without nvme_path": (
        "ds_zero3_offload.json", lambda z, c: z.update(offload_optimizer={"device": "nvme"}),
        ["offload_optimizer to nvme needs its nvme_path"]),
    "a key DeepSpeed removed": ("ds_zero3.json", lambda z, c: z.update(mics_shard_size=2),
                                ["DeepSpeed refuses it", "mics_shard_size"]),
    "a value out of DeepSpeed's range": ("ds_zero2.json", lambda z, c: z.update(reduce_bucket_size=-1),
                                         ["DeepSpeed refuses it", "reduce_bucket_size"]),
}


@pytest.mark.parametrize("case", REFUSED_BEFORE_DEEPSPEED_STARTS)
def test_deepspeed_settings_refused_before_it_starts(tiny, tmp_path, case):
    base, change, words = REFUSED_BEFORE_DEEPSPEED_STARTS[case]
    assert_refused_on_parsing(parsed(tiny, tmp_path, "--deepspeed", str(deepspeed_config(tmp_path, base, change))),
                              *words)


def test_deepspeed_batch_sizes_for_several_ranks_are_not_checked_before_the_ranks_meet(tiny, tmp_path, monkeypatch):
    """A config that states its batch sizes for two GPUs (train_batch_size twice the micro-batch)
    is legitimate: a process that does not know the number of ranks yet does not refuse it."""
    batch = parsed(tiny, tmp_path)[1]["per_device_train_batch_size"]
    config = json.loads((ROOT / "deepspeed-single-gpu" / "ds_zero2.json").read_text())
    config.update(train_batch_size=2 * batch, train_micro_batch_size_per_gpu=batch, gradient_accumulation_steps=1)
    path = tmp_path / "two-gpus.json"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("LOCAL_RANK", "0")  # as the launcher starts a rank
    assert not isinstance(parsed(tiny, tmp_path, "--deepspeed", str(path)), str)


SECTIONS = {  # where a DeepSpeed config nests an object
    "zero_optimization": lambda config, value: config.update(zero_optimization=value),
    "zero_optimization.offload_param": lambda config, value: config["zero_optimization"].update(offload_param=value),
    "zero_optimization.offload_optimizer": lambda config, value: config["zero_optimization"].update(offload_optimizer=value),
    "fp16": lambda config, value: config.update(fp16=value),
    "optimizer": lambda config, value: config.update(optimizer=value),
}


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize("value", ["cpu", ["cpu"], 3], ids=["text", "list", "number"])
def test_a_deepspeed_section_that_is_not_an_object(tiny, tmp_path, section, value):
    config = json.loads((ROOT / "deepspeed-single-gpu" / "ds_zero3_offload.json").read_text())
    SECTIONS[section](config, value)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(config))
    assert_refused_on_parsing(parsed(tiny, tmp_path, "--deepspeed", str(path)), f"DeepSpeed config {path}")


REFUSED_BY_DEEPSPEED = {  # DeepSpeed checks these by assertion (or fails on them) as it starts
    "param_dtype against the run's precision": (
        lambda z, c: c.update(data_types={"param_dtype": "bf16"}),
        ["param_dtype='bf16' conflicts with the enabled precision mode", "engine.py"]),
}


@pytest.mark.parametrize("case", REFUSED_BY_DEEPSPEED)
def test_deepspeed_refusals_where_deepspeed_makes_them(tiny, tmp_path, case):
    """Caught where DeepSpeed raises them, whichever check it is: one line naming the config,
    DeepSpeed's words and where it said them."""
    change, words = REFUSED_BY_DEEPSPEED[case]
    path = deepspeed_config(tmp_path, "ds_zero3_offload.json", change)
    timed_refusal(train("deepspeed-single-gpu", tiny, tmp_path, "--deepspeed", str(path), launcher=True),
                  f"DeepSpeed config {path}: DeepSpeed refuses it", *words, launched=True)


# ------------------------------------------------------------------ a full disk, at every moment
@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB disk of its own (tmpfs: needs root), for a run's output folder."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (root only)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk, leave):
    """Fill the disk, then give back `leave` bytes."""
    with open(disk / "filler", "ab") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 2**16)
                f.flush()
        f.truncate(max(0, f.tell() - leave))


@pytest.mark.parametrize("moment", ["before the run", "saving a checkpoint", "saving the model"])
def test_a_disk_that_fills(tiny, tmp_path, small_disk, monkeypatch, moment):
    """Refused before training when the folder's disk cannot hold the model and a checkpoint;
    filling later, the run ends in one line naming the folder, with no half-written checkpoint
    or model, the last complete checkpoint kept, and no lock left."""
    from transformers import Trainer
    out = small_disk / "out"
    if moment == "before the run":
        fill(small_disk, leave=100_000)
        timed_refusal(train("baseline", tiny, tmp_path, output_dir=out), f"--output_dir {out}: its disk has",
                      "this run writes about", "free space there")
        return
    save_checkpoint, save_model = Trainer._save_checkpoint, Trainer.save_model

    def full_at_step_3(trainer, *args, **kwargs):
        if trainer.state.global_step == 3:
            fill(small_disk, leave=50_000)
        return save_checkpoint(trainer, *args, **kwargs)

    def full_at_the_end(trainer, *args, _internal_call=False, **kwargs):
        if not _internal_call:
            fill(small_disk, leave=50_000)
        return save_model(trainer, *args, _internal_call=_internal_call, **kwargs)
    if moment == "saving a checkpoint":
        monkeypatch.setattr(Trainer, "_save_checkpoint", full_at_step_3)
        kept, gone = "checkpoint-2", ["checkpoint-3"]
    else:
        monkeypatch.setattr(Trainer, "save_model", full_at_the_end)
        kept, gone = "checkpoint-4", ["model.safetensors", "config.json", "tokenizer.json", "trainer_state.json"]
    proc = train("baseline", tiny, tmp_path, output_dir=out, save_strategy="steps", save_steps=1)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"error: no space left on the disk of {out}"), last
    assert f"its newest complete checkpoint, {kept}, is kept" in last, last
    assert (out / kept / "trainer_state.json").is_file()
    from workshop.resume import intact
    assert intact(out / kept / "model.safetensors") and intact(out / kept / "optimizer.pt")
    assert not [name for name in gone if (out / name).exists()], sorted(p.name for p in out.iterdir())
    assert not (out / ".run-lock").exists() and not list(out.glob(".*partial"))
    print(f"{moment}: {last}")


# ------------------------------------------------------------------ signals, and a job anywhere
@pytest.mark.parametrize("number", sorted(int(s) for s in signal.valid_signals() if 0 < s < 32))
def test_a_training_killed_by_any_signal_is_named(tmp_path, number):
    """However the training process ended (its status 128 + N, or the deepspeed launcher's
    line for a rank), the job's reason names the signal; SIGKILL's, with the host memory."""
    from workshop import job
    log, csv = tmp_path / "job.out", tmp_path / "run-host-memory-n1.csv"
    csv.write_text("timestamp,rss_mib\n2000/01/01 00:00:00,99999\n" + "".join(
        f"{time.strftime('%Y/%m/%d %H:%M:%S')},{mib}\n" for mib in (100, 4321, 200)))
    name = signal.Signals(number).name
    for lines, status in (("training...\n", 128 + number),
                          (f"[launch.py:1] ['python', 'train.py'] exits with return code = -{number}\n", 1)):
        log.write_text(lines)
        said = job.reason(log, 0, time.time() - 60, tmp_path / "run", status, str(tmp_path / "*-host-memory-*.csv"))
        assert said.startswith(f"error: a training process was killed by {name} (signal {number})"), said
        if number == signal.SIGKILL:
            assert "peaked at 4,321 MiB (run-host-memory-n1.csv), of the node's" in said, said


def test_a_stage_folder_copied_anywhere_runs_its_job_and_says_why_it_was_killed(tiny, tmp_path):
    """A stage folder alone, where the workshop package is installed (this Python's): its job
    runs (no SLURM); its training killed with SIGKILL, as the out-of-memory killer does, the
    job's last line names the signal and the host memory. With a python without the package,
    the job stops in one line."""
    stage = shutil.copytree(ROOT / "baseline", tmp_path / "baseline", ignore=shutil.ignore_patterns("log", "runs"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    job, lines = job_without_slurm(stage / "baseline.slurm", tiny_args(tiny, train_samples=64, num_train_epochs=50), env)
    try:
        time.sleep(1.5)  # a row or two in the host memory log
        import psutil
        ranks = [p for p in psutil.Process(job.pid).children(recursive=True) if "train.py" in p.cmdline()]
        assert len(ranks) == 1, ranks
        ranks[0].send_signal(signal.SIGKILL)
        lines += job.communicate(timeout=120)[0].splitlines()
    finally:
        job.kill()
    assert job.returncode == 1, "\n".join(lines[-30:])
    assert lines[-1].startswith("error: a training process was killed by SIGKILL (signal 9), as the "
                                "kernel does when a node runs out of memory: its ranks' host memory "
                                "peaked at "), lines[-1]
    assert re.search(r"MiB \(baseline-local-[\w-]+-host-memory-\S+\.csv\), of the node's [\d,]+ MiB: "
                     r"raise #SBATCH --mem", lines[-1]), lines[-1]
    assert "Traceback" not in "\n".join(lines)

    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3")
    env.update(PATH=f"{bare}{os.pathsep}/usr/bin:/bin", PYTHONPATH="")
    env.pop("VIRTUAL_ENV", None)
    start = time.monotonic()
    proc = subprocess.run(["bash", str(stage / "baseline.slurm")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: no python with the workshop package here (python: {bare / 'python'}): activate the "
        f"environment that has it above (README: Setup), or set up ../.venv"], proc.stderr
    print(f"{time.monotonic() - start:.1f} s: {proc.stderr.strip()}")
