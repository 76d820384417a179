"""The jobs' Python helpers (workshop/job.py, workshop/host_memory.py), without SLURM."""
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from workshop import job

COMPILER_COMMAND = "[1/2] c++ -MMD -MF shm.o.d " + "-I/site/include " * 40 + "-c shm.cpp -o shm.o"


def test_the_reason_is_the_cause_not_a_compiler_command(tmp_path):
    """A DeepSpeed op that fails to build on a full TMPDIR: train.py's reason is a wall of
    compiler command; the job's last line names the cause."""
    log = tmp_path / "job.out"
    log.write_text("an earlier attempt's lines\nerror: an older failure\n")
    start = log.stat().st_size
    with log.open("a") as f:
        f.write(f"Traceback (most recent call last):\nRuntimeError: Error building extension "
                f"'deepspeed_shm_comm': {COMPILER_COMMAND}\n"
                f"/tmp/full/ccA1b2.s: Assembler messages:\n"
                f"/tmp/full/ccA1b2.s: Fatal error: can't write 14 bytes to section .text: No space left on device\n"
                f"ninja: build stopped: subcommand failed.\n"
                f"error: RuntimeError: Error building extension 'deepspeed_shm_comm': {COMPILER_COMMAND}\n"
                f"[launch.py] exits with return code = 1\n")
    reason = job.reason(log, start, 0, tmp_path / "run", 1)
    assert reason == ("error: building DeepSpeed's op deepspeed_shm_comm failed: /tmp/full/ccA1b2.s: "
                      "Fatal error: can't write 14 bytes to section .text: No space left on device")


def test_the_reason_is_train_py_s_own_line_else_its_metrics(tmp_path):
    log = tmp_path / "job.out"
    log.write_text("error: dataset folder ./nope does not exist\n[launch.py] exits with return code = 1\n")
    assert job.reason(log, 0, 0, tmp_path, 1) == "error: dataset folder ./nope does not exist"
    log.write_text("Killed\n")  # by the kernel's out-of-memory killer, say: named, with the memory
    assert job.reason(log, 0, 0, tmp_path, 137).startswith(
        "error: a training process was killed by SIGKILL (signal 9), as the kernel does when a node "
        "runs out of memory (the node has ")
    assert job.reason(log, 0, 0, tmp_path, 3) == \
        "error: train.py ended with exit status 3 without a reason: see the lines above"
    (tmp_path / "run_metrics.json").write_text(json.dumps({"error": "out of host memory"}))
    assert job.reason(log, 0, 0, tmp_path, 1) == "error: out of host memory"
    # a requeued attempt that ends without a word: not the previous attempt's reason, but
    # srun's line for the node whose task was killed
    log.write_text("srun: error: n2: task 1: Killed\nsrun: error: n1: task 0: Exited with exit code 143\n")
    assert job.reason(log, 0, time.time() + 1, tmp_path, 143) == \
        "error: the task on n2 was killed (srun: error: n2: task 1: Killed)"


def test_a_requeued_attempt_says_the_steps_it_lost(tmp_path):
    assert job.lost(tmp_path) == "no checkpoint and no run_metrics.json: training starts afresh"
    (tmp_path / "run_metrics.json").write_text(json.dumps({"global_step": 37}))
    assert job.lost(tmp_path) == ("37 step(s) of the previous attempt are lost (it reached step "
                                  "37): no checkpoint: training starts afresh")
    (tmp_path / "checkpoint-30").mkdir()  # cut off while saving: not one to resume from
    (tmp_path / "checkpoint-25").mkdir()
    (tmp_path / "checkpoint-25" / "trainer_state.json").write_text("{}")
    assert job.lost(tmp_path) == ("12 step(s) of the previous attempt are lost (it reached step "
                                  "37): resuming from checkpoint-25")
    assert job.checkpoint(tmp_path).split()[0] == "25"
    (tmp_path / "run_metrics.json").write_text(json.dumps({"global_step": 25}))
    assert job.lost(tmp_path) == ""


def test_host_memory_counts_the_ranks_once(tmp_path):
    """A launcher with one `python train.py` rank, which forks a child: the rank's memory,
    once (not the launcher's, not the fork's)."""
    (tmp_path / "train.py").write_text("import os, time\nblock = bytearray(300 * 2**20)\n"
                                       "os.fork()\ntime.sleep(4)\n")
    launcher = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                                 "subprocess.run([sys.executable, 'train.py']); time.sleep(1)"],
                                cwd=tmp_path)
    csv = tmp_path / "memory.csv"
    logger = subprocess.Popen([sys.executable, "-m", "workshop.host_memory", str(launcher.pid), str(csv)])
    try:
        launcher.wait(timeout=60)
        logger.wait(timeout=10)
    finally:
        launcher.kill()
        logger.kill()
    rows = csv.read_text().splitlines()
    assert rows[0] == "timestamp,rss_mib"
    assert all(re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d,\d+", r) for r in rows[1:]), rows
    peak = max(int(r.split(",")[1]) for r in rows[1:])
    assert 300 <= peak < 450, rows


def test_a_taken_port_gives_the_next_free_one():
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert job.port(taken) > taken


def test_a_python_without_the_packages_names_the_environment(tmp_path):
    """A job whose Python lacks deepspeed (the launcher's exit status 127) or the package."""
    from workshop.job import reason
    log = tmp_path / "job.out"
    log.write_text("run x on n1, output in /o\npython: /opt/py/bin/python\nrun_node.sh: line 3: deepspeed: command not found\n")
    said = reason(log, 0, 0, tmp_path / "o", 127)
    assert said.startswith("error: the job's Python environment (/opt/py/bin/python) has a command it runs is missing")
    assert "pip install -e ." in said
    log.write_text("python: /opt/py/bin/python\nModuleNotFoundError: No module named 'workshop'\n")
    assert "has no module workshop: activate" in reason(log, 0, 0, tmp_path / "o", 1)


def test_a_jobs_last_lines_are_its_summary(tmp_path):
    """train.py's summary again, from run_metrics.json, where launcher lines or a progress bar
    cut short came after it in this attempt's log; not where it is already last, nor from an
    earlier attempt's metrics."""
    from workshop.metrics import TIME_PARTS, summary_lines
    run = tmp_path / "run"
    run.mkdir()
    metrics = dict(status="complete", error=None, epochs=[dict(epoch=1, train_loss=2.5, eval_loss=3.25)],
                   answer_quality=None, time_seconds={p: 1.0 for p in TIME_PARTS}, wall_seconds=8.0,
                   global_step=4, max_steps=4, eval_samples=8)
    (run / "run_metrics.json").write_text(json.dumps(metrics))
    lines = summary_lines(metrics, run / "run_metrics.json")
    assert lines[0] == "epoch 1: train_loss 2.5000 eval_loss 3.2500" and lines[-1] == f"metrics: {run}/run_metrics.json"
    log = tmp_path / "job.out"
    log.write_text("an earlier attempt\n" + "\n".join(lines) + "\n")
    assert job.summary(log, 0, 0, run) is None
    log.write_text("\n".join(lines) + "\n[launch.py:285:main] Process 7 exits successfully.\n")
    assert job.summary(log, 0, 0, run) == "\n".join(lines)
    log.write_text("\n".join(lines) + "\n\r 44%|####      | 1049/2400 [01:19<01:42, 13.13it/s]")
    assert job.summary(log, 0, 0, run) == "\n".join(lines)
    assert job.summary(log, 0, time.time() + 60, run) is None  # not this attempt's metrics
    interrupted = dict(metrics, status="interrupted", error="stopped by signal 15", global_step=3)
    assert summary_lines(interrupted, run / "run_metrics.json")[-1] == (
        f"interrupted by SIGTERM after step 3 of 4: no checkpoint was saved: run again with "
        f"--output_dir {run} to start afresh")


def test_a_requeue_says_what_the_next_attempt_starts_from(tmp_path):
    assert job.resumes(tmp_path) == f"{tmp_path} holds no complete checkpoint: the next attempt starts afresh"
    (tmp_path / "checkpoint-8").mkdir()  # cut off
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text("{}")
    assert job.resumes(tmp_path) == f"the next attempt resumes from {tmp_path / 'checkpoint-5'} (step 5)"


def test_the_installed_job_helper_is_the_one_the_jobs_source():
    proc = subprocess.run([sys.executable, "-m", "workshop.job", "path"], capture_output=True, text=True)
    assert proc.returncode == 0 and Path(proc.stdout.strip()) == Path(job.__file__).with_name("job.sh")
    assert Path(proc.stdout.strip()).is_file()
