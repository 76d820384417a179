"""The multi-node stage's job on a local cluster of two nodes, n1 and n2, each in its own
network namespace (mode "2ns": a node's network can be taken away; mode "2" on loopback where
namespaces cannot be made), after the harness's own quick checks: completes through an srun
that cleans the environment, is cancelled cleanly, refuses more GPUs than allocated, and a
lost node ends the attempt with its reason, then the job requeues itself and resumes. (One
node: tests/test_slurm_one_node.py, beside this one on its own cluster.)
"""
import dataclasses
import os
import re
import time
from pathlib import Path

import pytest

import slurm_cluster as sc
from stage_jobs import (JOB_TIMEOUT, MULTI_NODE_2x1_ZERO3, assert_checkpoints_whole,
                        assert_nothing_left, check_cancelled, check_completes,
                        complete_checkpoints, cpu_args, master_port, resumable, running, wait,
                        write_job)

pytestmark = pytest.mark.slurm

# this file's cluster: two nodes (tests/test_slurm_one_node.py has its own beside it)
LAB = sc.Lab("slurm-local-two-nodes", ctl_port=16827)


# ------------------------------------------------------ the harness itself (tests/slurm_cluster.py)
@pytest.fixture
def slurm2(request):
    return LAB.up("2", request)


def test_two_nodes_srun_hostname(slurm2, tmp_path):
    write_job(tmp_path, "two", """
#SBATCH --job-name=two
#SBATCH --output=log/%x-%j.out
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:1
#SBATCH --mem=32G
srun hostname
""")
    job = slurm2.submit("two.slurm", cwd=tmp_path)
    assert slurm2.wait(job, timeout=60) == ("COMPLETED", "0:0")
    assert slurm2.job_info(job)["NodeList"] == "n[1-2]"
    lines = (tmp_path / "log" / f"two-{job}.out").read_text().split()
    assert sorted(lines) == ["n1", "n2"]


def test_failing_and_cancelled_jobs(slurm2, tmp_path):
    write_job(tmp_path, "fail", """
#SBATCH --output=log/%x-%j.out
echo about to fail; exit 3
""")
    # task 1 fails at once; --kill-on-bad-exit must end task 0's sleep and fail the job
    write_job(tmp_path, "badtask", """
#SBATCH --output=log/%x-%j.out
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
set -e
srun --kill-on-bad-exit=1 bash -c '[ "$SLURM_PROCID" = 1 ] && exit 5; sleep 60'
""")
    write_job(tmp_path, "long", """
#SBATCH --output=log/%x-%j.out
sleep 300
""")
    t0 = time.monotonic()
    fail, badtask, long = (slurm2.submit(f"{n}.slurm", cwd=tmp_path) for n in ("fail", "badtask", "long"))
    assert slurm2.wait(fail, timeout=30) == ("FAILED", "3:0")
    state, code = slurm2.wait(badtask, timeout=30)
    assert state == "FAILED" and code != "0:0"
    assert time.monotonic() - t0 < 30
    slurm2.cancel(long)
    assert slurm2.wait(long, timeout=30)[0] == "CANCELLED"


# ---------------------------------------------------------------------------------- two nodes
def srun_through_sh_in_a_clean_environment(folder: Path) -> dict:
    """An `srun` first on the job's PATH as some sites have it: a /bin/sh script that starts
    the tasks in a clean environment (no exported shell functions, no virtualenv, none of the
    job's variables: only SLURM's own, PATH and HOME). It notes each call in folder/calls."""
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "srun"
    wrapper.write_text(f"""#!/bin/sh
echo "$*" >> {folder / 'calls'}
exec env -i PATH=/usr/bin:/bin HOME="$HOME" $(env | grep '^SLURM' | tr '\\n' ' ') /usr/bin/srun "$@"
""")
    wrapper.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{LAB.env()['PATH']}"}


def test_two_node_job_completes_through_a_clean_srun(two_nodes, jobs, tmp_path):
    _, tiny = two_nodes
    wrapper = tmp_path / "srun-wrapper"
    case = dataclasses.replace(MULTI_NODE_2x1_ZERO3, env={
        **MULTI_NODE_2x1_ZERO3.env, **srun_through_sh_in_a_clean_environment(wrapper)})
    job = check_completes(case, tiny, jobs)
    out = job.output()
    calls = (wrapper / "calls").read_text().splitlines()
    assert len(calls) == 1 and "run_node.sh" in calls[0], calls
    # one task per node, with the job's cores (srun does not take --cpus-per-task from sbatch)
    assert "--ntasks-per-node=1 --cpus-per-task=1 " in calls[0] and "--kill-on-bad-exit=1" in calls[0]
    assert LAB.job_info(job.job_id)["NodeList"] == "n[1-2]"
    assert (job.log_dir / f"{job.run_name}.hostfile").read_text().split("\n") == \
           ["n1 slots=1", "n2 slots=1", ""]
    assert f"run {job.run_name} on n1, 2 node(s) x 1 processes" in out
    port = master_port(job)
    assert f"rendezvous on n1:{port}" in out and 20000 <= port < 32768
    # one launcher per node (node ranks 0 and 1), one rank each, on gloo over n1 <-> n2
    for rank in (0, 1):
        assert f"nnodes=2, num_local_procs=1, node_rank={rank}" in out, job.tail()
    assert out.count("dist_world_size=2") == 2
    assert "'n1': [0], 'n2': [1]" in out


def test_two_node_job_cancelled_waits_for_the_training(two_nodes, jobs):
    check_cancelled(MULTI_NODE_2x1_ZERO3, two_nodes[1], jobs)


def test_two_node_job_asking_more_gpus_than_allocated_is_refused(two_nodes, jobs):
    asked = dataclasses.replace(MULTI_NODE_2x1_ZERO3, env={**MULTI_NODE_2x1_ZERO3.env, "GPUS": "3"})
    with running(asked, cpu_args(two_nodes[1]), jobs) as job:
        assert wait(job) == ("FAILED", "1:0"), job.tail()
    assert job.last_line() == "error: GPUS=3 but this allocation has 1 GPU(s)"
    assert "train.py" not in job.output() and not job.run_dir.exists()
    assert_nothing_left(job)


# seconds a collective may wait, for the test (the job's default is COLLECTIVE_TIMEOUT_DEFAULT)
TEST_COLLECTIVE_TIMEOUT = 20
COLLECTIVE_TIMEOUT_DEFAULT = 60


def test_two_node_job_losing_a_node_ends_with_the_reason_and_requeues(two_nodes, jobs):
    """n2's network vanishes after the first checkpoint: the job's attempt ends within
    COLLECTIVE_TIMEOUT + 40 s (not SLURM's node timeout, minutes) with the reason, and the job
    requeues itself to resume from the checkpoints saved before, which are whole and unchanged.
    (A requeued attempt resuming, and running to its end: the one-node file's time-limit and
    preemption tests.)"""
    cluster, tiny = two_nodes
    if cluster.mode != "2ns":
        pytest.skip("no network namespaces here (up.sh 2ns): no node's network to take away")
    # The job's default DeepSpeed config, ZeRO off: DeepSpeed runs its collectives on a copy of
    # the process group made without a timeout, which workshop/arguments.py hands --ddp_timeout on to
    # (torch's default would be 30 minutes for gloo).
    case = dataclasses.replace(MULTI_NODE_2x1_ZERO3, name="multi-node-2x1-zero0", zero_stage=0, env={
        "DS_CONFIG": "ds_config.json", "COLLECTIVE_TIMEOUT": str(TEST_COLLECTIVE_TIMEOUT)})
    args = cpu_args(tiny, **resumable(case))
    with running(case, args, jobs) as job:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not complete_checkpoints(job.run_dir):
            assert LAB.job_info(job.job_id)["JobState"] in sc.ACTIVE, job.tail()
            assert time.monotonic() < deadline, job.tail()
            time.sleep(0.2)
        before = complete_checkpoints(job.run_dir)
        try:
            cluster.set_link("n2", up=False)
            t0 = time.monotonic()
            # the batch script has ended once the job leaves RUNNING (COMPLETING: SLURM still
            # waits to hear from n2's slurmd, which it cannot reach)
            while LAB.job_info(job.job_id)["JobState"] == "RUNNING":
                assert time.monotonic() < t0 + 180, f"still running after 180 s\n{job.tail()}"
                time.sleep(0.5)
            ended = time.monotonic() - t0
            print(f"job {job.job_id} ended {ended:.1f} s after n2's network went down")
        finally:
            cluster.set_link("n2", up=True)
        lines = [line for line in job.output().rstrip("\n").splitlines()  # less SLURM's own
                 if not line.startswith("slurmstepd")]                        # about the requeue
        assert lines[-3].startswith("error: a collective operation timed out ("), job.tail()
        assert re.fullmatch(rf"requeueing job {job.job_id} after a failure \(restart 1 of at most 3\): the next "
                            rf"attempt resumes from {re.escape(str(job.run_dir))}/checkpoint-(\d+) \(step \1\)",
                            lines[-2]), job.tail()
        assert lines[-1].startswith(f"job {job.job_id} is requeued, not cancelled"), job.tail()
        assert ended < TEST_COLLECTIVE_TIMEOUT + 40, job.tail()
        assert {name: complete_checkpoints(job.run_dir).get(name) for name in before} == before
        assert_checkpoints_whole(job.run_dir)
        # n2 back in service as an administrator puts it (SLURM forgets the job's part there
        # at once instead of retrying n2 for a minute): the job is cancelled without waiting
        LAB.scontrol("update", "NodeName=n2", "State=DOWN", "Reason=lost its network")
        LAB.scontrol("update", "NodeName=n2", "State=RESUME")

    # the job's default with the most this test allows beyond the wait: within 2 minutes
    assert COLLECTIVE_TIMEOUT_DEFAULT + 40 <= 120
    assert f"COLLECTIVE_TIMEOUT=${{COLLECTIVE_TIMEOUT:-{COLLECTIVE_TIMEOUT_DEFAULT}}}" in \
        (job.folder / f"{case.stage}.slurm").read_text()


