"""Quick checks of tests/slurm_cluster.py against a real local cluster (tools/slurm-local)."""
import time

import pytest

import slurm_cluster as sc

pytestmark = pytest.mark.slurm


@pytest.fixture
def slurm1(request):
    return sc.cluster("1", request)


@pytest.fixture
def slurm2(request):
    return sc.cluster("2", request)


def write_job(folder, name, body):
    path = folder / f"{name}.slurm"
    path.write_text("#!/bin/bash\n" + body.lstrip())
    return path


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
    job = sc.submit("hello.slurm", cwd=tmp_path, env_overrides={"GREETING": "hi, there"},
                    sbatch_args=["--job-name=cli-name"])
    assert sc.wait(job, timeout=60) == ("COMPLETED", "0:0")
    out = (tmp_path / "log" / f"cli-name-{job}.out").read_text()
    assert "node=localhost mem=32768 gpus=0 greeting=hi, there" in out


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
    job = sc.submit("two.slurm", cwd=tmp_path)
    assert sc.wait(job, timeout=60) == ("COMPLETED", "0:0")
    assert sc.job_info(job)["NodeList"] == "n[1-2]"
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
    fail, badtask, long = (sc.submit(f"{n}.slurm", cwd=tmp_path) for n in ("fail", "badtask", "long"))
    assert sc.wait(fail, timeout=30) == ("FAILED", "3:0")
    state, code = sc.wait(badtask, timeout=30)
    assert state == "FAILED" and code != "0:0"
    assert time.monotonic() - t0 < 30
    sc.cancel(long)
    assert sc.wait(long, timeout=30)[0] == "CANCELLED"
