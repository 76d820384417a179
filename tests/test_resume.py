"""Stopping and resuming: on request (the file SLURM's warning makes the job create) a run
saves and exits 75, and resumed it ends where the uninterrupted run ends; on SIGTERM it saves
only when the job says preemption."""
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import EPOCHS, ROOT, RUNS, metrics_of, run_stage, tiny_args


@pytest.mark.parametrize("name", ["baseline", "zero3_offload", "zero3_2ranks"])
def test_stopped_on_request_and_resumed_ends_as_the_uninterrupted_run(runs, tiny, name, tmp_path):
    """The file the .slurm jobs create on SLURM's warning signal stops training after the
    current step with a complete checkpoint; run again, train.py resumes from it and ends where
    the uninterrupted run ends. A checkpoint cut off while being written is skipped, not used,
    not deleted; the good one it would have followed is left as it was."""
    stage, ranks, extra = RUNS[name]
    stopped_run, first = runs(name, stopped=True)  # the save-and-stop file was there from the start
    shutil.copytree(stopped_run, tmp_path, dirs_exist_ok=True)
    stopped = metrics_of((tmp_path, first), exit_status=75)  # the jobs requeue on 75
    assert stopped["status"] == "stopped_on_request" and stopped["stopped_on_request_at_step"] == 1
    assert "stopped on request" in first.stdout
    good = tmp_path / "checkpoint-1"
    saved = {p: p.read_bytes() for p in good.rglob("*") if p.is_file()}
    assert good / "trainer_state.json" in saved
    cut_off = tmp_path / "checkpoint-3"  # as a job killed while writing it leaves it
    cut_off.mkdir()
    (cut_off / "model.safetensors").write_bytes(b"\0" * 100)

    second = run_stage(stage, tiny, tmp_path, ranks, extra)
    resumed, uninterrupted = metrics_of((tmp_path, second)), metrics_of(runs(name))
    assert f"skipping incomplete checkpoint {cut_off}" in second.stdout
    assert f"resuming from {good} (step 1)" in second.stdout
    assert not (tmp_path / ".run-lock").exists()  # the run let go of its output folder
    assert resumed["status"] == "complete" and resumed["stopped_on_request_at_step"] is None
    assert resumed["answer_quality"] == uninterrupted["answer_quality"]  # "before" kept across
    assert [e["epoch"] for e in resumed["epochs"]] == list(range(1, EPOCHS + 1))
    for ours, theirs in zip(uninterrupted["epochs"], resumed["epochs"]):
        assert theirs["eval_loss"] == pytest.approx(ours["eval_loss"], rel=1e-5)
        assert theirs["train_loss"] == pytest.approx(ours["train_loss"], rel=1e-5)
    assert {p: p.read_bytes() for p in good.rglob("*") if p.is_file()} == saved
    assert [p.name for p in cut_off.iterdir()] == ["model.safetensors"]


@pytest.mark.parametrize("preempted", [True, False])
def test_sigterm_during_training_saves_when_the_job_says_preemption(tiny, tmp_path, preempted):
    """SLURM preempts with SIGTERM and a grace period; the job then creates the save-and-stop
    file: train.py saves after the current step and exits 75 (the job requeues it). Without
    the file (scancel, a time limit without warning) it leaves with 143, its metrics written."""
    args = tiny_args(tiny, output_dir=tmp_path, train_samples=64, num_train_epochs=50)
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT / "baseline",
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "{'loss': " in line:
                break
        proc.send_signal(signal.SIGTERM)
        if preempted:
            time.sleep(0.5)
            (tmp_path / "save-and-stop").touch()
        output = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    metrics = json.loads((tmp_path / "run_metrics.json").read_text())
    if preempted:
        assert proc.returncode == 75, output[-3000:]
        step = metrics["stopped_on_request_at_step"]
        assert metrics["status"] == "stopped_on_request" and step >= 1
        assert (tmp_path / f"checkpoint-{step}" / "trainer_state.json").is_file()
    else:
        assert proc.returncode == 143, output[-3000:]
        assert metrics["status"] == "interrupted" and metrics["error"] == "stopped by signal 15"
        assert not list(tmp_path.glob("checkpoint-*"))
