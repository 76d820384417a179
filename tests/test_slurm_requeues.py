"""One-node jobs that SLURM stops before their end, submitted with real sbatch to a local
cluster of one node: at their time limit with its warning (they save, requeue and resume) and
without one (they say so and end with their summary), preempted, and requeued by hand. On a
cluster of its own beside tests/test_slurm_one_node.py's, so that pytest's workers run the two
files at once: these tests mostly wait for SLURM.
"""
import dataclasses
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

import slurm_cluster as sc
from conftest import ROOT
from stage_jobs import (BASELINE, CPU_MACHINE, JOB_TIMEOUT, assert_checkpoints_whole,
                        assert_nothing_left, cpu_args, lift_requeue_hold, metrics_of, resumable,
                        running, training_processes, wait_for_output, wait_through_requeues)

pytestmark = pytest.mark.slurm

# this file's cluster: one node (tests/test_slurm_one_node.py and test_slurm_two_nodes.py have theirs)
LAB = sc.Lab("slurm-local-requeues", ctl_port=16837)


# a minute, and the warning as late as SLURM can promise it (it checks about every 30 s)
TIME_LIMIT = ("--time=1", "--signal=B:USR1@40")


def test_one_node_job_at_its_time_limit_saves_requeues_and_resumes(one_node, jobs):
    """Warned before its time limit, the job saves, train.py exits 75, the job requeues itself
    and its next attempt resumes from that checkpoint (that a resumed run ends as the
    uninterrupted one: tests/test_resume.py; a requeued attempt run to its end: the preemption
    test below)."""
    case, args = BASELINE, cpu_args(one_node, **resumable(BASELINE))
    with running(dataclasses.replace(case, sbatch_args=TIME_LIMIT), args, jobs) as job:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not int((info := LAB.job_info(job.job_id)).get("Restarts", 0)):
            assert info["JobState"] in sc.ACTIVE and time.monotonic() < deadline, job.tail()
            time.sleep(0.5)
        saved = re.search(r"^stopped on request .* after step (\d+) of", job.output(), re.M)
        assert saved and "warning signal: saving a checkpoint and stopping" in job.output(), job.tail()
        while "{'loss': " not in job.output().partition(f"attempt 2 of job {job.job_id}")[2]:
            info = LAB.job_info(job.job_id)
            assert info["JobState"] in sc.ACTIVE and time.monotonic() < deadline, job.tail()
            lift_requeue_hold(job, info)
            time.sleep(0.5)
    out = job.output()
    assert f"resuming from {job.run_dir}/checkpoint-{saved[1]} (step {saved[1]})" in out, out[-3000:]
    assert_checkpoints_whole(job.run_dir)
    assert_nothing_left(job)


EPOCHS_PREEMPTED = 30  # 120 steps: the notice comes at the first logged one


def test_one_node_job_preempted_saves_requeues_and_resumes(one_node, jobs):
    """SIGTERM to the batch shell while SLURM keeps the job running (what preemption with a
    grace time is to the job; here `scancel --batch --signal=TERM`, which reaches that shell
    only) is a preemption notice: the job asks train.py to save, requeues itself and resumes."""
    case, args = BASELINE, cpu_args(one_node, **{**resumable(BASELINE), "num_train_epochs": EPOCHS_PREEMPTED})
    with running(case, args, jobs) as job:
        wait_for_output(job, "{'loss': ")
        LAB.signal(job.job_id, "TERM")
        wait_through_requeues(job, notice="preemption notice (5 s to go)")  # the cluster's KillWait
    out = job.output()
    assert re.search(rf"resuming from {re.escape(str(job.run_dir))}/checkpoint-(\d+) \(step \1\)", out)
    assert "attempt 2 of job" in out and "are lost" not in out, out[-3000:]
    # SLURM's banner for the notice says CANCELLED; the job says what happens next, and when
    # (the stopping step's own lines may come between the two)
    assert re.search(rf"\*\*\* JOB {job.job_id} ON \S+ CANCELLED AT", out), out[-3000:]
    said = re.search(rf"^requeueing job {job.job_id}: the next attempt resumes from {re.escape(str(job.run_dir))}"
                     rf"/checkpoint-(\d+) \(step \1\)\n(?:.*\n)*?(job {job.job_id} is requeued, not cancelled .*)$",
                     out, re.M)
    assert said and "SLURM holds it about 2 minutes (its BeginTime, about " in said[2], out[-3000:]
    metrics = metrics_of(job)
    assert metrics["status"] == "complete", out[-3000:]
    assert len(metrics["epochs"]) == EPOCHS_PREEMPTED
    assert_checkpoints_whole(job.run_dir)
    assert_nothing_left(job)


def test_one_node_job_at_a_time_limit_without_warning_says_so_and_ends_with_its_summary(one_node, jobs, tmp_path):
    """No warning signal configured (a site's copy of the job without --signal; here the stage
    folder copied without that line): SLURM's SIGTERM at the time limit. The job says so at
    once, train.py stops after its current step and writes its metrics, and the job's last
    lines are the run's summary, ending with how it stopped and what a run again does."""
    copy = shutil.copytree(ROOT / "baseline", tmp_path / "baseline", ignore=shutil.ignore_patterns("log", "runs"))
    job_file = copy / "baseline.slurm"
    job_file.write_text("".join(line for line in job_file.read_text().splitlines(keepends=True)
                                if not line.startswith("#SBATCH --signal")))
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # no ../.venv there
    args = cpu_args(one_node, **{**resumable(BASELINE), "save_steps": 10**6})  # no checkpoint
    job_id = LAB.submit("baseline.slurm", cwd=copy, env_overrides=env, sbatch_args=[*CPU_MACHINE, "--time=1"],
                        script_args=args)
    log, run_dir = copy / "log" / f"baseline-{job_id}.out", copy / "runs" / f"baseline-{job_id}"
    deadline = time.monotonic() + JOB_TIMEOUT
    while "{'loss': " not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and LAB.job_info(job_id)["JobState"] in sc.ACTIVE, log.read_text()
        time.sleep(0.3)
    # SLURM's shortest limit is a minute (and it checks every 30 s): the training waits for it at
    # the lowest priority, giving its core to the tests beside it meanwhile
    assert (pids := training_processes(run_dir)), log.read_text()
    for pid in pids:
        os.setpriority(os.PRIO_PROCESS, pid, 19)
    state = LAB.wait(job_id, timeout=JOB_TIMEOUT)
    out = log.read_text()
    assert state[0] == "TIMEOUT", (state, out[-3000:])
    assert (f"job {job_id} reached its time limit without a warning signal to save first "
            f"(#SBATCH --signal=B:USR1@300): train.py stops after its current step") in out, out[-3000:]
    metrics = json.loads((run_dir / "run_metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["error"] == "stopped by signal 15", metrics
    lines = out.rstrip("\n").splitlines()
    assert lines[-1] == (f"interrupted by SIGTERM after step {metrics['global_step']} of {metrics['max_steps']}: "
                         f"no checkpoint was saved: run again with --output_dir {run_dir} to start afresh"), out[-3000:]
    assert lines[-2] == f"metrics: {run_dir}/run_metrics.json" and lines[-3].startswith("job time "), out[-3000:]


def test_one_node_job_requeued_by_hand_says_the_steps_it_lost(one_node, jobs):
    """`scontrol requeue` of a running job before its first checkpoint: the next attempt says
    how many steps of the first are lost (train.py's metrics say how far it got), and trains
    afresh."""
    args = cpu_args(one_node, **{**resumable(BASELINE), "save_steps": 10**6})  # no checkpoint
    with running(BASELINE, args, jobs) as job:
        wait_for_output(job, "{'loss': ")
        LAB.scontrol("requeue", str(job.job_id))
        deadline = time.monotonic() + JOB_TIMEOUT
        while "of the previous attempt are lost" not in job.output():
            assert time.monotonic() < deadline, job.tail()
            lift_requeue_hold(job, LAB.job_info(job.job_id))
            time.sleep(0.5)
        first = metrics_of(job)  # the first attempt's, on SIGTERM
    out = job.output()
    assert first["status"] == "interrupted" and first["global_step"] >= 1, first
    step = first["global_step"]
    assert f"attempt 2 of job {job.job_id} (requeued 1 time(s))" in out, out[-3000:]
    assert (f"{step} step(s) of the previous attempt are lost (it reached step {step}): no "
            f"checkpoint: training starts afresh") in out, out[-3000:]
    assert_nothing_left(job)  # cancelled on leaving the block
