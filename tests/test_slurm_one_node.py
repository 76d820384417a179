"""Every one-node stage job, submitted with real sbatch to a local cluster of one node (after
the harness's own quick checks): completes, fails with its reason last, is cancelled cleanly,
refuses what the allocation cannot give; and the jobs without SLURM (stopped by SLURM: at a
time limit, preempted, requeued: tests/test_slurm_requeues.py). The jobs' files: one
screen each, their plumbing shared. (Two nodes: tests/test_slurm_two_nodes.py, beside this
one on its own cluster.)
"""
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest

import slurm_cluster as sc
from conftest import ROOT, STAGES, job_without_slurm, tiny_args
from stage_jobs import (BASELINE_FROM_ROOT, CPU_MACHINE, JOB_TIMEOUT, MULTI_GPU_2_ZERO2,
                        SINGLE_GPU_ZERO3, assert_nothing_left, check_cancelled, check_completes,
                        check_fails, cpu_args, environ, hosts_of, master_port, ports_held, running,
                        wait, write_job)

pytestmark = pytest.mark.slurm

# this file's cluster: one node (tests/test_slurm_two_nodes.py has its own beside it)
LAB = sc.Lab("slurm-local", ctl_port=16817)


# ------------------------------------------------------ the harness itself (tests/slurm_cluster.py)
@pytest.fixture
def slurm1(request):
    return LAB.up("1", request)


def test_one_node_job(slurm1, tmp_path, monkeypatch):
    # workshop-style directives; a stray SBATCH_* variable in the caller's environment must
    # not override them
    monkeypatch.setenv("SBATCH_MEM_PER_NODE", "1G")
    write_job(tmp_path, "hello", """
#SBATCH --job-name=hello
#SBATCH --output=log/%x-%j.out
#SBATCH --gres=gpu:1
#SBATCH --mem=32G
#SBATCH --time=12:00:00
echo "node=$SLURMD_NODENAME mem=$SLURM_MEM_PER_NODE gpus=$CUDA_VISIBLE_DEVICES greeting=$GREETING"
""")
    job = slurm1.submit("hello.slurm", cwd=tmp_path, env_overrides={"GREETING": "hi, there"},
                        sbatch_args=["--job-name=cli-name"])
    assert slurm1.wait(job, timeout=60) == ("COMPLETED", "0:0")
    out = (tmp_path / "log" / f"cli-name-{job}.out").read_text()
    assert "node=localhost mem=32768 gpus=0 greeting=hi, there" in out


def test_a_second_cluster_runs_beside_and_goes_down_alone(slurm1, tmp_path):
    """Another cluster of the harness, under another name and ports, runs beside this one;
    taking it down stops its own daemons and cancels its own jobs only: this cluster's running
    job goes on, and this cluster still takes jobs."""
    other = sc.Lab("slurm-local-beside", ctl_port=16917)
    write_job(tmp_path, "hello", """
#SBATCH --job-name=hello
#SBATCH --output=log/%x-%j.out
echo "hello from $SLURM_CONF"
""")
    write_job(tmp_path, "long", """
#SBATCH --job-name=long
#SBATCH --output=log/%x-%j.out
sleep 300
""")
    ours = slurm1.submit("long.slurm", cwd=tmp_path)
    other.up("1")
    try:
        hello, theirs = other.submit("hello.slurm", cwd=tmp_path), other.submit("long.slurm", cwd=tmp_path)
        assert other.wait(hello, timeout=60) == ("COMPLETED", "0:0")
        assert (tmp_path / "log" / f"hello-{hello}.out").read_text() == f"hello from {other.conf}\n"
        assert slurm1.job_info(ours)["JobState"] == "RUNNING"
    finally:
        other.down()
    left = [p.name for p in Path("/proc").glob("[0-9]*")
            if f"SLURM_CONF={other.conf}".encode() in environ(p)]
    assert not left, f"processes of the other cluster (its job {theirs}) left: {left}"
    assert slurm1.job_info(ours)["JobState"] == "RUNNING"  # ours goes on
    slurm1.cancel(ours)
    job = slurm1.submit("hello.slurm", cwd=tmp_path)
    assert slurm1.wait(job, timeout=60) == ("COMPLETED", "0:0")
    assert slurm1.wait(ours, timeout=30)[0] == "CANCELLED"


# ---------------------------------------------------------------------------------- the files
JOB_HELPER = ROOT / "workshop" / "job.sh"


def job_lines(stage: str) -> list[str]:
    lines = (ROOT / stage / f"{stage}.slurm").read_text().splitlines()
    if stage == "deepspeed-multi-node":  # what each node runs
        lines += (ROOT / stage / "run_node.sh").read_text().splitlines()
    return lines


def test_jobs_share_their_lines_and_mark_what_depends_on_the_site():
    """Each job fits one screen and reads as the lesson: #SBATCH lines, the environment, the
    GPU memory logger, the launcher, the end; the plumbing is in one helper that every job
    sources (workshop/job.sh), and every line of the baseline's job that does not name its
    stage or start its training is in every other job too (the multi-node job's per-node part
    in run_node.sh). The job's clock starts first, bash's strict mode next; the site's
    settings are marked CLUSTER; no shell function goes through srun."""
    helper = JOB_HELPER.read_text().splitlines()
    baseline = [line for line in job_lines("baseline") if "baseline" not in line and line.strip()
                and not line.startswith(("# Stage 1", "start_job", "launch python train.py",
                                         "#SBATCH --gres", "#SBATCH --cpus", "#SBATCH --mem",
                                         "#SBATCH --nodes", "#SBATCH --ntasks"))]
    for stage in STAGES:
        job = (ROOT / stage / f"{stage}.slurm").read_text().splitlines()
        assert len(job) <= 60, f"{stage}.slurm: {len(job)} lines"
        # job.sh from the installed package, once the job's Python is chosen: a stage folder
        # copied anywhere runs (tests/test_mistakes.py runs one)
        assert job.index('cd "$(dirname "$SCRIPT")"') < next(i for i, line in enumerate(job) if "activate" in line) \
            < next(i for i, line in enumerate(job) if line.startswith("JOB_SH=$(python -m workshop.job path")) \
            < job.index('source "$JOB_SH"  # what every stage\'s job shares (workshop/job.sh, from the installed package)')
        lines = job_lines(stage)
        missing = [line for line in baseline if line not in lines]
        assert not missing, f"{stage}: lines of the baseline's job not here:\n" + "\n".join(missing)
        commands = [line for line in job if line.strip() and not line.startswith("#")]
        assert commands[:2] == ["export JOB_STARTED_AT=$(date +%s.%N)  # first: train.py counts "
                                "the job's time from here", "set -euo pipefail"], commands[:2]
        # the lesson in its order; the end is the last line
        order = [max(i for i, line in enumerate(job) if line.startswith("#SBATCH")),
                 next(i for i, line in enumerate(job) if "source ../.venv/bin/activate" in line),
                 next(i for i, line in enumerate(job) if line.startswith(("launch ", "  launch_nodes srun"))),
                 len(job) - 1]
        assert order == sorted(order) and job[-1].startswith("end_job"), (stage, order)
        if stage != "deepspeed-multi-node":  # there each node logs its GPUs (run_node.sh)
            assert order[1] < next(i for i, line in enumerate(job) if "nvidia-smi --query-gpu" in line) < order[2]
        # the plumbing is the helper's: no traps, process walkers or requeueing of its own
        for line in lines:
            assert not re.search(r"\btrap\b|\bps -e\b|\bawk\b|scontrol requeue", line), (stage, line)
        text = "\n".join(lines)
        assert "--time=00:30:00" in text and "12:00:00" not in text
        assert "export -f" not in text and "TORCH_EXTENSIONS_DIR" not in text
        assert not re.search(r"^#SBATCH --(partition|account)", text, re.M)  # on the command line
    node = (ROOT / "deepspeed-multi-node" / "run_node.sh").read_text()
    assert 'source "$(python -m workshop.job path)"' in node and "nvidia-smi --query-gpu" in node
    for line in [*helper, *(line for stage in STAGES for line in job_lines(stage))]:
        if re.match(r"#SBATCH --(gres|cpus-per-task|mem|requeue|nodes=[2-9])", line) or line.startswith(
                ("export COMPILE_CACHE", "COLLECTIVE_TIMEOUT=", "MAX_RESTARTS=", "# CLUSTER")):
            assert "CLUSTER" in line, line
    # srun names its allocation: a site's wrapper that cleans the environment still finds it
    assert re.search(r'srun --jobid "\$SLURM_JOB_ID" --nodes "\$SLURM_NNODES" --ntasks "\$SLURM_NNODES" '
                     r'--ntasks-per-node=1 .*--kill-on-bad-exit=1 --wait=',
                     (ROOT / "deepspeed-multi-node" / "deepspeed-multi-node.slurm").read_text(), re.S)


# ---------------------------------------------------------------------------------- one node
@pytest.mark.parametrize("case", [BASELINE_FROM_ROOT, SINGLE_GPU_ZERO3, MULTI_GPU_2_ZERO2], ids=str)
def test_one_node_job_completes(case, one_node, jobs):
    held = contextlib.ExitStack()

    def hold_its_port(job):  # the rendezvous port the job will pick: another program's
        held.enter_context(ports_held(20000 + job.job_id % 10000))
    with held:
        job = check_completes(case, one_node, jobs,
                              hold_its_port if case is SINGLE_GPU_ZERO3 else None)
    out = job.output()
    if case.submit_from == "root":  # its log in the repository's log/, the run in the stage's
        assert job.out.parent == ROOT / "log" and job.run_dir.parent == ROOT / "baseline" / "runs"
    if case.zero_stage is not None:  # a port outside the ephemeral range 32768-60999
        port = master_port(job)
        assert 20000 <= port < 32768, port
        if case is SINGLE_GPU_ZERO3:
            host = hosts_of(job).pop()
            assert f"port {port - 1} is in use on {host}: using {port}" in out, job.tail()
    if case.world_size > 1:  # the count came from the allocation's --gres=gpu:2
        assert f"{case.world_size} processes" in out
        assert "dist_world_size=2" in out


def test_one_node_job_fails_with_its_reason_last(one_node, jobs):
    job = check_fails(MULTI_GPU_2_ZERO2, one_node, jobs)
    assert "exits with return code = 1" in job.output()  # the launcher's lines came after


def test_job_without_gpu_refuses_in_one_line_with_its_own_environment(one_node, jobs, tmp_path,
                                                                      monkeypatch):
    """A GPU job that sees no GPU (no --use_cpu True) stops with train.py's one line, last.
    It runs the Python of the stage's ../.venv even when conda's base environment is active,
    as many sites have it (a copy of the stage, beside the package and a .venv that is the
    test's Python)."""
    copy = tmp_path / "baseline"
    shutil.copytree(ROOT / "baseline", copy, ignore=shutil.ignore_patterns("log", "runs", "__pycache__"))
    (tmp_path / "workshop").symlink_to(ROOT / "workshop")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    if not (tmp_path / ".venv" / "bin" / "activate").is_file():
        pytest.skip(f"{sys.prefix} is not a virtualenv (no bin/activate)")
    conda = tmp_path / "conda"
    (conda / "bin").mkdir(parents=True)
    (conda / "bin" / "python").write_text("#!/bin/sh\necho 'conda base python ran' >&2; exit 3\n")
    (conda / "bin" / "python").chmod(0o755)
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    monkeypatch.setenv("CONDA_PREFIX", str(conda))
    monkeypatch.setenv("CONDA_DEFAULT_ENV", "base")
    monkeypatch.setenv("PATH", f"{conda / 'bin'}{os.pathsep}{os.environ['PATH']}")
    job_id = LAB.submit("baseline.slurm", cwd=copy, sbatch_args=CPU_MACHINE,
                       script_args=tiny_args(one_node, use_cpu=False))
    state = LAB.wait(job_id, timeout=JOB_TIMEOUT)
    out = (copy / "log" / f"baseline-{job_id}.out").read_text()
    assert state == ("FAILED", "1:0"), out[-3000:]
    python = re.search(r"^python: (.*)$", out, re.M)
    assert python and Path(python[1]).resolve() == (Path(sys.prefix) / "bin" / "python").resolve(), out
    assert "conda base" not in out
    lines = out.rstrip("\n").splitlines()
    assert lines[-1].startswith("error: no CUDA GPU is visible (torch.cuda.is_available() is "
                                "False"), out[-3000:]
    assert lines[-1].endswith("to train on the CPU on purpose add --use_cpu True")
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]  # said once


def test_one_node_job_cancelled_waits_for_the_training(one_node, jobs):
    check_cancelled(MULTI_GPU_2_ZERO2, one_node, jobs)


def test_one_node_job_refusals_in_one_line(one_node, jobs):
    """GPUS=N above the allocation's GPU count, and no free rendezvous port: each refused with
    one line, last, before any training."""
    allocated = 2
    asked = dataclasses.replace(MULTI_GPU_2_ZERO2, env={**MULTI_GPU_2_ZERO2.env, "GPUS": "4"})
    with running(asked, cpu_args(one_node), jobs) as job:
        state = wait(job)
    assert state == ("FAILED", "1:0"), job.tail()
    assert job.last_line() == f"error: GPUS=4 but this allocation has {allocated} GPU(s)"
    assert "train.py" not in job.output() and not job.run_dir.exists()
    assert_nothing_left(job)

    held = contextlib.ExitStack()
    with held:
        with running(SINGLE_GPU_ZERO3, cpu_args(one_node), jobs,
                     lambda job: held.enter_context(ports_held(20000 + job.job_id % 10000, 100))) as job:
            state = wait(job)
    first = 20000 + job.job_id % 10000
    assert state == ("FAILED", "1:0"), job.tail()
    assert job.last_line() == (f"error: ports {first}-{first + 99} are all in use on "
                               f"{hosts_of(job).pop()}: set MASTER_PORT to a free one"), job.tail()
    assert "train.py" not in job.output() and not job.run_dir.exists()



def test_job_without_slurm_stopped_on_request_says_how_to_resume(tiny, job_env):
    """`bash baseline.slurm`, then `kill -USR1`: train.py saves and exits 75; the job says how
    to resume and exits 75 too (no SLURM to requeue it)."""
    proc, lines = job_without_slurm(ROOT / "baseline" / "baseline.slurm",
                                    cpu_args(tiny, train_samples=64, num_train_epochs=50))
    try:
        proc.send_signal(signal.SIGUSR1)
        lines += proc.communicate(timeout=300)[0].splitlines()
    finally:
        proc.kill()
        name = re.match(r"run (\S+) on ", lines[0])[1] if lines else None
        run_dir = ROOT / "baseline" / "runs" / str(name)
    try:
        assert proc.returncode == 75, "\n".join(lines[-30:])
        assert lines[-1] == (f"stopped with a checkpoint: OUTPUT_DIR={run_dir} bash "
                             f"{ROOT / 'baseline' / 'baseline.slurm'} [the same options] resumes it")
        metrics = json.loads((run_dir / "run_metrics.json").read_text())
        assert metrics["status"] == "stopped_on_request"
        step = metrics["stopped_on_request_at_step"]
        assert (run_dir / f"checkpoint-{step}" / "trainer_state.json").is_file()
    finally:
        if name and os.environ.get("KEEP_SLURM_JOB_FILES") != "1":
            shutil.rmtree(run_dir, ignore_errors=True)
            for path in (ROOT / "baseline" / "log").glob(f"{name}*"):
                path.unlink()
