"""Quick checks of tests/slurm_cluster.py against a real local cluster (tools/slurm-local)."""
import subprocess
import time
from pathlib import Path

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


def test_a_second_cluster_runs_beside_and_goes_down_alone(slurm1, tmp_path):
    """Another cluster of the harness, under another name and ports, runs beside this one;
    taking it down stops its own daemons and cancels its own jobs only: this cluster's running
    job goes on, and this cluster still takes jobs."""
    other = {"SLAB_NAME": "slurm-local-beside", "SLAB_CTL_PORT": "16917", "SLAB_SLURMD_PORT": "16918"}
    other_env = sc.slurm_env({**other, "SLURM_CONF": "/tmp/slurm-local-beside/etc/slurm.conf"})
    other_env.pop("SLAB_DIR", None)
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
    ours = sc.submit("long.slurm", cwd=tmp_path)

    def tool(script, *args):
        r = subprocess.run(["bash", str(sc.TOOL / script), *args], env=other_env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:]

    def sbatch(script):
        r = subprocess.run(["sbatch", "--parsable", script], cwd=tmp_path, env=other_env,
                           capture_output=True, text=True, timeout=60, check=True)
        return r.stdout.strip()

    tool("up.sh", "1")
    try:
        hello, theirs = sbatch("hello.slurm"), sbatch("long.slurm")
        deadline = time.monotonic() + 60
        while "COMPLETED" not in subprocess.run(["scontrol", "show", "job", hello], env=other_env,
                                                capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, f"job {hello} of the other cluster did not complete"
            time.sleep(0.3)
        assert (tmp_path / "log" / f"hello-{hello}.out").read_text() == \
            "hello from /tmp/slurm-local-beside/etc/slurm.conf\n"
        assert sc.job_info(ours)["JobState"] == "RUNNING"
    finally:
        tool("down.sh")
    left = [p.name for p in Path("/proc").glob("[0-9]*")
            if b"SLURM_CONF=/tmp/slurm-local-beside/etc/slurm.conf" in environ(p)]
    assert not left, f"processes of the other cluster (its job {theirs}) left: {left}"
    assert sc.job_info(ours)["JobState"] == "RUNNING"  # ours goes on
    sc.cancel(ours)
    job = sc.submit("hello.slurm", cwd=tmp_path)
    assert sc.wait(job, timeout=60) == ("COMPLETED", "0:0")
    assert sc.wait(ours, timeout=30)[0] == "CANCELLED"


def environ(process: Path) -> bytes:
    try:
        return (process / "environ").read_bytes()
    except OSError:
        return b""
