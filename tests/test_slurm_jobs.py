"""Every stage's SLURM job, submitted with real sbatch to a local cluster (tools/slurm-local),
after quick checks of the harness itself (one file: one cluster per machine, one pytest worker).

Each `<stage>.slurm` is submitted as written, from its stage folder as the README showed it,
from the repository root (`sbatch baseline/baseline.slurm`) or with `sbatch --chdir`. Only
what a CPU machine cannot give is overridden on sbatch's command line (--mem, --cpus-per-task,
--gres for the rank count); the tiny model and data go in through the job's own mechanisms:
arguments after the script's name reach train.py (with --use_cpu True: there is no GPU here),
DS_CONFIG / GPUS / COLLECTIVE_TIMEOUT / OUTPUT_DIR are read by the script. The jobs write into
the repository (log/, runs/ as on a cluster); the files of the job ids these tests ran are
removed at the end (KEEP_SLURM_JOB_FILES=1 keeps them for a post-mortem).

One node (mode "1") first, then two nodes n1, n2 each in its own network namespace (mode
"2ns": a node's network can be taken away), one mode switch per run. Needs root and the
Debian slurm/munge packages (installed by up.sh when missing); skipped otherwise. DeepSpeed
jobs use the default compile cache (COMPILE_CACHE, ~/.cache/bloom-workshop): a fresh machine
first compiles an op (~40-90 s), later runs reuse it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from safetensors.torch import load_file

import slurm_cluster as sc
from conftest import ROOT, tiny_args

pytestmark = pytest.mark.slurm

# What a 2-core CPU machine cannot give the jobs' #SBATCH lines (the local cluster advertises
# 16 CPUs and 128 GiB per node, so the multi-GPU stages' --cpus-per-task=32 would be refused).
CPU_MACHINE = ["--mem=2G", "--cpus-per-task=1"]
JOB_TIMEOUT = 420          # s; a fresh machine first compiles DeepSpeed's shm op (~40-90 s)
LEFTOVER_GRACE = 10        # s for a job's processes to be gone after it has ended
# variables the jobs read: none may leak in from the caller's shell
JOB_KNOBS = ("DS_CONFIG", "GPUS", "OUTPUT_DIR", "MASTER_PORT", "MASTER_ADDR", "RUN_NAME",
             "HOSTFILE", "SBATCH_EXPORT", "COLLECTIVE_TIMEOUT", "PREPARED", "JOB_STARTED_AT",
             "CONDA_DEFAULT_ENV")
STAGE_FOLDERS = ("baseline", "deepspeed-single-gpu", "deepspeed-multi-gpu", "deepspeed-multi-node")


def cpu_args(tiny, **overrides):
    """tiny_args for a job on this CPU machine: the GPU jobs train on the CPU only when told."""
    return tiny_args(tiny, **{"use_cpu": True, **overrides})


def _nvidia_smi_works() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


HAVE_NVIDIA_SMI = _nvidia_smi_works()


@dataclass(frozen=True)
class Case:
    """A stage's job as a test submits it."""
    name: str
    stage: str
    env: dict = field(default_factory=dict)         # read by the job script
    sbatch_args: tuple = ()                          # besides CPU_MACHINE
    world_size: int = 1
    nodes: int = 1
    zero_stage: int | None = None
    # "stage": cd <stage> && sbatch <stage>.slurm; "root": sbatch <stage>/<stage>.slurm from
    # the repository root; "chdir": the same with sbatch --chdir=<stage>
    submit_from: str = "stage"

    def __str__(self):
        return self.name


BASELINE = Case("baseline", "baseline")
# the README's first command, from the repository root: the job finds its stage folder itself
BASELINE_FROM_ROOT = Case("baseline-from-root", "baseline", submit_from="root")
SINGLE_GPU_ZERO3 = Case("single-gpu-zero3-chdir", "deepspeed-single-gpu",
                        env={"DS_CONFIG": "ds_zero3.json"}, zero_stage=3, submit_from="chdir")
# 2 GPUs in the allocation: the job takes its process count from it (SLURM_GPUS_ON_NODE)
MULTI_GPU_2_ZERO2 = Case("multi-gpu-2ranks-zero2", "deepspeed-multi-gpu",
                         env={"DS_CONFIG": "ds_zero2.json"}, sbatch_args=("--gres=gpu:2",),
                         world_size=2, zero_stage=2)
# the script's --nodes=2, one rank per node: srun + run_node.sh (deepspeed --no_ssh) on n1 and n2
MULTI_NODE_2x1_ZERO3 = Case("multi-node-2x1-zero3", "deepspeed-multi-node",
                            env={"DS_CONFIG": "ds_zero3.json"}, sbatch_args=("--gres=gpu:1",),
                            world_size=2, nodes=2, zero_stage=3)


# ------------------------------------------------------ the harness itself (tests/slurm_cluster.py)
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


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def slurm(request):
    """slurm(mode) -> the local cluster in that mode ("1": localhost, "2ns": n1 + n2 in network
    namespaces); it is (re)started only when the mode changes, and taken down at the end of the
    session."""
    state = {}

    def use(mode):
        if mode in state.get("skip", {}):
            pytest.skip(state["skip"][mode])
        if state.get("mode") != mode:
            try:
                state["cluster"] = sc.cluster(mode, request)
            except pytest.skip.Exception as e:  # not root / no packages / no namespaces
                state.setdefault("skip", {})[mode] = str(e)
                raise
            state["mode"] = mode
        return state["cluster"]
    return use


@dataclass
class Ran:
    """A job these tests submitted and released (so its files are ours to remove)."""
    case: Case
    job_id: int
    job_name: str
    seconds: float = 0.0

    @property
    def folder(self) -> Path:  # the stage folder
        return ROOT / self.case.stage

    @property
    def workdir(self) -> Path:  # where SLURM starts it, and writes its log/
        return ROOT if self.case.submit_from == "root" else self.folder

    @property
    def log_dir(self) -> Path:
        return self.workdir / "log"

    @property
    def run_name(self) -> str:  # the scripts' RUN_NAME: <job name>-<job id>
        return f"{self.job_name}-{self.job_id}"

    @property
    def out(self) -> Path:
        return self.log_dir / f"{self.run_name}.out"

    @property
    def run_dir(self) -> Path:
        return self.folder / "runs" / self.run_name

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else "(no .out file)"

    def last_line(self) -> str:
        return (self.output().rstrip("\n").splitlines() or [""])[-1]

    def tail(self, n=40) -> str:
        return "\n".join(self.output().splitlines()[-n:])


def job_files(stage: str, run_name: str) -> list[Path]:
    """What a job named run_name of this stage wrote, submitted from anywhere: log/<run>.out,
    log/<run>-*.csv, log/<run>.hostfile (in the stage's log/ or the repository's), and
    runs/<run>/ (run_name = <job name>-<job id>, so job 1 never matches job 10's files)."""
    found = [ROOT / stage / "runs" / run_name] if (ROOT / stage / "runs" / run_name).exists() else []
    for log in (ROOT / stage / "log", ROOT / "log"):
        found += [p for p in (log / f"{run_name}.out", log / f"{run_name}.hostfile") if p.exists()]
        found += sorted(log.glob(f"{run_name}-*"))
    return found


@pytest.fixture(scope="module")
def jobs():
    """Registry of the jobs run here; at the end: cancel any still active, remove their files
    (only theirs) and the runs/ folders that these tests created and left empty."""
    ran: list[Ran] = []
    had_runs = {stage: (ROOT / stage / "runs").exists() for stage in STAGE_FOLDERS}
    yield ran
    for job in ran:
        cancel_if_active(job)
    if os.environ.get("KEEP_SLURM_JOB_FILES") == "1":
        return
    for job in ran:
        for path in job_files(job.case.stage, job.run_name):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for stage, existed in had_runs.items():
        runs = ROOT / stage / "runs"
        if not existed and runs.is_dir() and not any(runs.iterdir()):
            runs.rmdir()


@pytest.fixture
def one_node(slurm, request, job_env):
    """The cluster in mode "1" and the tiny model/data folder (built only once the cluster is
    up, so that a machine without SLURM skips at once)."""
    slurm("1")
    return request.getfixturevalue("tiny")


@pytest.fixture
def two_nodes(slurm, request, job_env):
    """The cluster in mode "2ns" (n1, n2, each in its network namespace), else in mode "2"
    (the same nodes on loopback, where network namespaces cannot be made), and the tiny model."""
    try:
        cluster = slurm("2ns")
    except pytest.skip.Exception:
        cluster = slurm("2")
    return cluster, request.getfixturevalue("tiny")


@pytest.fixture
def job_env(monkeypatch):
    """The caller's environment minus the knobs the jobs read, with the test's own Python:
    run from the repository's .venv, the job activates ../.venv itself (as for users);
    run from another environment, the job gets that one (VIRTUAL_ENV + PATH)."""
    for name in JOB_KNOBS:
        monkeypatch.delenv(name, raising=False)
    if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve():
        monkeypatch.delenv("VIRTUAL_ENV", raising=False)
        monkeypatch.delenv("CONDA_PREFIX", raising=False)
    else:
        monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)
        monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


# ---------------------------------------------------------------------------------- helpers
def submit(case: Case, train_args: list, jobs: list, before_release=None) -> Ran:
    """sbatch the stage's job the way case.submit_from says (held first: job ids restart at 1
    whenever the cluster restarts, and a job must not find an earlier run's runs/<name>-<id>
    and resume from it; such an id is cancelled before it runs and the next one taken), call
    before_release(job) if given, then release it."""
    folder = ROOT / case.stage
    if case.submit_from == "stage":
        cwd, script, where = folder, f"{case.stage}.slurm", []
    else:
        cwd, script = ROOT, f"{case.stage}/{case.stage}.slurm"
        where = [f"--chdir={case.stage}"] if case.submit_from == "chdir" else []
    for _ in range(50):
        job_id = sc.submit(script, cwd=cwd, env_overrides=case.env,
                           sbatch_args=["--hold", *where, *CPU_MACHINE, *case.sbatch_args],
                           script_args=train_args)
        name = sc.job_info(job_id)["JobName"]
        if not job_files(case.stage, f"{name}-{job_id}"):
            break
        sc.cancel(job_id)  # a held job never started: it wrote nothing
    else:
        pytest.fail(f"{folder}: files of 50 earlier job ids in the way (log/, runs/)")
    job = Ran(case, job_id, name)
    jobs.append(job)
    if before_release:
        before_release(job)
    r = subprocess.run(["scontrol", "release", str(job_id)], env=sc.slurm_env(),
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        sc.cancel(job_id)
        raise RuntimeError(f"scontrol release {job_id}: {r.stderr.strip()}")
    return job


def cancel_if_active(job: Ran):
    """scancel the job if it still runs: it, not a namesake (ids restart with the cluster)."""
    try:
        info = sc.job_info(job.job_id)
        if (info.get("JobState") in sc._ACTIVE and info.get("JobName") == job.job_name
                and Path(info.get("WorkDir", "/")).resolve() == job.workdir.resolve()):
            sc.cancel(job.job_id)
            sc.wait(job.job_id, timeout=60)
    except (RuntimeError, TimeoutError):
        pass  # the cluster is gone (mode switch, down.sh): so are its jobs


@contextlib.contextmanager
def running(case: Case, train_args: list, jobs: list, before_release=None):
    """submit(); whatever happens in the block, the job does not outlive it."""
    job = submit(case, train_args, jobs, before_release)
    try:
        yield job
    finally:
        cancel_if_active(job)


def wait(job: Ran, timeout=JOB_TIMEOUT) -> tuple[str, str]:
    t0 = time.monotonic()
    state = sc.wait(job.job_id, timeout=timeout)
    job.seconds = time.monotonic() - t0
    print(f"job {job.job_id} ({job.case}): {state[0]} {state[1]} after {job.seconds:.1f} s")
    return state


def wait_for_output(job: Ran, text: str, timeout=JOB_TIMEOUT):
    """Until the job's log shows `text`, while the job is active."""
    deadline = time.monotonic() + timeout
    while text not in job.output():
        state = sc.job_info(job.job_id)["JobState"]
        assert state in sc._ACTIVE, f"job {job.job_id} ended ({state}) before {text!r}:\n{job.tail()}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s\n{job.tail()}"
        time.sleep(0.3)


def job_processes(job: Ran) -> list[str]:
    """Live processes of this job: their environment names it (SLURM_JOB_ID=<id> on our
    cluster's SLURM_CONF; inherited by everything the job starts, loggers and `sleep` included),
    or their command line names its run (runs/<name>-<id>, log/<name>-<id>...)."""
    ours = (f"SLURM_JOB_ID={job.job_id}".encode(), f"SLURM_CONF={sc.SLURM_CONF}".encode())
    names_run = re.compile(rf"(?:runs|log)/{re.escape(job.run_name)}(?![0-9])")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie holds nothing; its parent (if ours) is listed itself
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue  # gone meanwhile
        if all(tag in env for tag in ours) or names_run.search(cmd):
            found.append(f"pid {pid} cwd {cwd}: {cmd[:300]}")
    return found


def assert_nothing_left(job: Ran):
    """No process of the job is left once it has ended (after a short grace: the loggers'
    last `sleep 1`, or a launcher still ending its ranks, may outlive the job's state by ~1 s)."""
    t0 = time.monotonic()
    while (left := job_processes(job)) and time.monotonic() < t0 + LEFTOVER_GRACE:
        time.sleep(0.25)
    assert not left, (f"job {job.job_id} ({job.case}) ended, but {LEFTOVER_GRACE} s later these "
                      f"of its processes still run:\n" + "\n".join(left))
    print(f"job {job.job_id}: no process left after {time.monotonic() - t0:.1f} s")


def distinct_node_hostnames() -> bool:
    """Mode 2 without unshare (no CAP_SYS_ADMIN): both nodes keep the machine's hostname."""
    return not (sc.LAB / "run" / "hosts_added").exists()


def hosts_of(job: Ran) -> set[str]:
    """The nodes' hostnames as the job saw them (`hostname -s`)."""
    if job.case.nodes == 1:
        m = re.search(rf"^run {re.escape(job.run_name)} on (\S+?),", job.output(), re.M)
        assert m, f"no 'run {job.run_name} on HOST' line:\n{job.tail()}"
        return {m.group(1)}
    return {"n1", "n2"}


def memory_log(csv: Path) -> list[int]:
    """The rss_mib column of a host memory CSV, its format checked."""
    rows = csv.read_text().splitlines()
    assert rows[0] == "timestamp,rss_mib" and len(rows) >= 2, f"{csv.name}: {rows}"
    assert all(re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d,\d+", r) for r in rows[1:]), rows
    return [int(r.split(",")[1]) for r in rows[1:]]


def assert_memory_logs(job: Ran, metrics: dict | None = None):
    """Host memory CSV of every node beside the job's log, with rows; GPU CSVs only where
    nvidia-smi works. Given the run's metrics: each node's log counts the training's ranks
    only, each once (not the deepspeed launcher, not compile workers): never above what the
    node's ranks held at their peak (ru_maxrss), and at least half of one rank's peak."""
    out = job.output()
    host_csvs = sorted(job.log_dir.glob(f"{job.run_name}-host-memory-*.csv"))
    if job.case.nodes > 1 and not distinct_node_hostnames():  # both nodes wrote one file
        assert host_csvs, f"no host memory CSV in {job.log_dir}"
        return
    hosts = hosts_of(job)
    assert {p.name for p in host_csvs} == {f"{job.run_name}-host-memory-{h}.csv" for h in hosts}
    peaks = sorted(metrics["peak_host_rss_mib"], reverse=True) if metrics else None
    per_node = job.case.world_size // job.case.nodes
    for csv in host_csvs:
        logged = max(memory_log(csv))
        if peaks:
            # a rank's RSS never exceeds its own peak; 1 MiB for rounding, 2% for what a rank
            # adds after it measured its peak (writing the metrics, leaving)
            assert logged <= sum(peaks[:per_node]) * 1.02 + 1, (csv.name, logged, peaks)
            assert logged >= 0.5 * peaks[-1], (csv.name, logged, peaks)
    gpu_csvs = sorted(job.log_dir.glob(f"{job.run_name}-gpu-memory-*.csv"))
    if HAVE_NVIDIA_SMI:
        assert gpu_csvs, f"nvidia-smi works but no GPU memory CSV in {job.log_dir}"
    else:
        assert not gpu_csvs, gpu_csvs
        notice = "nvidia-smi not found or no GPU: GPU memory is not logged; training anyway"
        assert out.count(notice) == job.case.nodes, job.tail()
        for host in hosts:  # each node says it, prefixed with its hostname
            assert f"{host}: {notice}" in out, f"{host}: no notice\n{job.tail()}"


def metrics_of(job: Ran) -> dict | None:
    path = job.run_dir / "run_metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


RELOAD = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
run, start = sys.argv[1:]
model, info = AutoModelForCausalLM.from_pretrained(run, output_loading_info=True)
tokenizer = AutoTokenizer.from_pretrained(run)
trained, initial = model.state_dict(), AutoModelForCausalLM.from_pretrained(start).state_dict()
ids = tokenizer("What is the capital of Tesk?", return_tensors="pt").input_ids
with torch.no_grad():
    loss = model(input_ids=ids, labels=ids).loss.item()
print(json.dumps(dict(
    problems={k: sorted(map(str, v)) for k, v in info.items() if v},
    same_keys=sorted(trained) == sorted(initial),
    same_shapes=all(trained[k].shape == initial[k].shape for k in trained if k in initial),
    finite=all(bool(torch.isfinite(v).all()) for v in trained.values()),
    changed=sum(not torch.equal(trained[k], initial[k]) for k in trained if k in initial),
    tensors=len(trained), loss=loss)))
"""


def assert_model_reloads(job: Ran, tiny: Path):
    """A fresh Python process reloads the saved model and tokenizer: every weight present,
    of the tiny model's shapes (ZeRO-3 saves gathered weights, not empty partitions), trained."""
    r = subprocess.run([sys.executable, "-c", RELOAD, str(job.run_dir), str(tiny / "model")],
                       capture_output=True, text=True, timeout=180, cwd=job.run_dir)
    assert r.returncode == 0, f"reloading {job.run_dir} failed:\n{r.stderr[-3000:]}"
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["problems"] == {}, got
    assert got["same_keys"] and got["same_shapes"] and got["finite"], got
    assert got["changed"] > 0 and got["loss"] == got["loss"], got  # trained; loss not NaN


def master_port(job: Ran) -> int:
    """The rendezvous port the deepspeed launcher was given (it logs its command)."""
    ports = set(re.findall(r"--master_port[= ](\d+)", job.output()))
    assert len(ports) == 1, f"master ports {ports}\n{job.tail()}"
    return int(ports.pop())


@contextlib.contextmanager
def ports_held(first: int, count: int = 1):
    """Listening sockets on ports first .. first+count-1 of this machine (another program's)."""
    held = []
    try:
        for port in range(first, first + count):
            s = socket.socket()
            s.bind(("", port))
            s.listen()
            held.append(s)
        yield
    finally:
        for s in held:
            s.close()


# ---------------------------------------------------------------------------------- checks
def check_completes(case: Case, tiny: Path, jobs: list, before_release=None):
    epochs = 2
    with running(case, cpu_args(tiny, num_train_epochs=epochs), jobs, before_release) as job:
        state = wait(job)
    out = job.output()
    assert state == ("COMPLETED", "0:0"), f"job {job.job_id}: {state}\n{job.tail()}"
    # the first line, which the tables tool reads: the run folder, absolute
    assert out.startswith(f"run {job.run_name} on ") and \
        out.splitlines()[0].endswith(f", output in {job.run_dir}"), out[:500]

    # the eval loss of every epoch: train.py's summary and the Trainer's own log lines
    summary = re.findall(r"epoch (\d+): train_loss (\S+) eval_loss (\S+)", out)
    assert [int(e) for e, _, _ in summary] == list(range(1, epochs + 1)), job.tail()
    assert len(re.findall(r"\{'eval_loss': '[-0-9.e]+'", out)) == epochs, job.tail()

    metrics = metrics_of(job)
    assert metrics is not None, f"no {job.run_dir}/run_metrics.json\n{job.tail()}"
    assert metrics["status"] == "complete" and metrics["error"] is None
    assert metrics["stage"] == case.stage and metrics["slurm_job_id"] == str(job.job_id)
    assert metrics["world_size"] == case.world_size
    assert metrics["nodes"] == case.nodes
    assert metrics["zero_stage"] == case.zero_stage
    assert metrics["deepspeed_config"] == case.env.get("DS_CONFIG")
    assert metrics["precision"] == "fp32"
    assert [e["eval_loss"] for e in metrics["epochs"]] == \
           pytest.approx([float(v) for _, _, v in summary], abs=5e-5)
    assert len(metrics["peak_host_rss_mib"]) == case.world_size  # gathered from every rank

    assert_memory_logs(job, metrics)
    assert_nothing_left(job)
    assert_model_reloads(job, tiny)
    return job


def check_fails(case: Case, tiny: Path, jobs: list):
    """A training that fails: the job fails (1), its last line is train.py's reason, however
    many launcher lines came after it."""
    with running(case, cpu_args(tiny, dataset_name_or_path="./nope"), jobs) as job:
        state = wait(job)
    assert state == ("FAILED", "1:0"), f"job {job.job_id}: {state}\n{job.tail()}"
    reason = "error: dataset folder ./nope does not exist"
    assert job.last_line().startswith(reason), job.tail()
    assert_nothing_left(job)
    assert_memory_logs(job)  # the loggers ran, and (above) were stopped
    metrics = metrics_of(job)
    assert metrics is None or metrics["status"] == "failed"
    return job


def check_cancelled(case: Case, tiny: Path, jobs: list):
    # 64 samples x 50 epochs: minutes of training, cancelled after its first logged step
    with running(case, cpu_args(tiny, train_samples=64, num_train_epochs=50), jobs) as job:
        wait_for_output(job, "{'loss': ")
        assert sc.job_info(job.job_id)["JobState"] == "RUNNING"
        assert job_processes(job), "training runs, yet no process of the job was found"
        t0 = time.monotonic()
        sc.cancel(job.job_id)
        state, _ = wait(job)
    assert state == "CANCELLED", job.tail()
    assert time.monotonic() - t0 < 30
    assert_nothing_left(job)
    assert_memory_logs(job)
    # the job waited for train.py, which leaves through SystemExit on SIGTERM: its metrics say
    # how far it got
    metrics = metrics_of(job)  # a second SIGTERM (the launcher passes SLURM's on) is ignored
    assert metrics is not None, job.tail()
    assert metrics["status"] == "interrupted" and metrics["error"] == "stopped by signal 15", metrics
    assert metrics["global_step"] >= 1 and metrics["stopped_on_request_at_step"] is None


def resumable(case: Case) -> dict:
    """cpu_args for a run long enough to be cut short (tens of seconds of training here),
    checkpointed every few dozen steps. It is evaluated every epoch by step count, so that
    the Trainer evaluates before it saves when both fall on one step (with eval_strategy
    "epoch" it saves first, and a run resumed from there never evaluates that epoch)."""
    steps_per_epoch = 64 // (16 * case.world_size)
    if case.world_size == 1:  # ~25 steps/s: 960 steps, longer than the time limit's warning
        epochs, every = 240, 125
    else:  # two ranks over gloo, about a step a second
        epochs, every = 6, 4
    return dict(train_samples=64, num_train_epochs=epochs, save_strategy="steps",
                save_steps=every, eval_strategy="steps", eval_steps=steps_per_epoch,
                answer_quality=False)


def complete_checkpoints(run_dir: Path) -> dict:
    """checkpoint folder name -> digest of all its files, for the complete checkpoints."""
    return {folder.name: hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*"))
                                                if p.is_file())).hexdigest()
            for folder in run_dir.glob("checkpoint-*") if (folder / "trainer_state.json").is_file()}


def assert_checkpoints_whole(run_dir: Path):
    """Each complete checkpoint: trainer_state.json of its step, weights that load."""
    for folder in sorted(run_dir.glob("checkpoint-*")):
        step = int(folder.name.split("-")[1])
        assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == step
        load_file(folder / "model.safetensors")  # whole, not cut off


def wait_through_requeues(job: Ran, notice="warning signal", failures: int | range = 0) -> Ran:
    """Wait for a job that requeues itself to complete; check that each requeue followed a
    checkpoint saved on `notice`, but `failures` of them (a count, or a range of counts), which
    followed a failure. SLURM holds a requeued job for two minutes before it may start again;
    the test lifts that hold (StartTime=now) so as not to wait, but only after a few seconds: a
    job started within the second of its requeue is refused ("Job credential revoked")."""
    restarts = 0
    deadline = time.monotonic() + 3 * JOB_TIMEOUT
    while (info := sc.job_info(job.job_id))["JobState"] in sc._ACTIVE:
        assert time.monotonic() < deadline, job.tail()
        restarts = int(info.get("Restarts", 0))
        lift_requeue_hold(job, info)
        time.sleep(0.5)
    out = job.output()
    failed = out.count(f"requeueing job {job.job_id} after a failure")
    assert failed in (failures if isinstance(failures, range) else [failures]), job.tail()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), job.tail()
    assert restarts >= 1 and out.count("requeueing job") == restarts, job.tail()
    assert out.count(f"{notice}: saving a checkpoint and stopping") >= restarts - failed
    assert len(re.findall(r"stopped on request .* after step \d+", out)) == restarts - failed
    return job


_pending_since = {}


def lift_requeue_hold(job: Ran, info: dict):
    """StartTime=now for a requeued job pending for 3 s (see wait_through_requeues)."""
    if info["JobState"] != "PENDING" or not int(info.get("Restarts", 0)):
        _pending_since.pop(job.job_id, None)
    elif time.monotonic() > _pending_since.setdefault(job.job_id, time.monotonic()) + 3:
        subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"],
                       env=sc.slurm_env(), capture_output=True, timeout=30)


def warn(job: Ran):
    """SLURM's warning before the time limit, by hand (what --signal=B:USR1@N does N seconds
    before the limit)."""
    subprocess.run(["scancel", "--batch", "--signal=USR1", str(job.job_id)], env=sc.slurm_env(),
                   check=True, capture_output=True, timeout=30)


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
    for stage in STAGE_FOLDERS:
        job = (ROOT / stage / f"{stage}.slurm").read_text().splitlines()
        assert len(job) <= 60, f"{stage}.slurm: {len(job)} lines"
        assert 'cd "$(dirname "$SCRIPT")" && source ../workshop/job.sh' in job
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
    assert "source ../workshop/job.sh" in node and "nvidia-smi --query-gpu" in node
    for line in [*helper, *(line for stage in STAGE_FOLDERS for line in job_lines(stage))]:
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
    job_id = sc.submit("baseline.slurm", cwd=copy, sbatch_args=CPU_MACHINE,
                       script_args=tiny_args(one_node, use_cpu=False))
    state = sc.wait(job_id, timeout=JOB_TIMEOUT)
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


# a minute, and the warning as late as SLURM can promise it (it checks about every 30 s)
TIME_LIMIT = ("--time=1", "--signal=B:USR1@40")


def test_one_node_job_at_its_time_limit_saves_requeues_and_resumes(one_node, jobs):
    """Warned before its time limit, the job saves, train.py exits 75, the job requeues itself
    and resumes, as often as it takes, to the end. (That a resumed run's losses are the
    uninterrupted run's, bit for bit: tests/test_stages.py.)"""
    case, args = BASELINE, cpu_args(one_node, **resumable(BASELINE))
    with running(dataclasses.replace(case, sbatch_args=TIME_LIMIT), args, jobs) as job:
        wait_through_requeues(job)
    out = job.output()
    assert re.search(rf"resuming from {re.escape(str(job.run_dir))}/checkpoint-(\d+) \(step \1\)", out)
    metrics = metrics_of(job)
    assert metrics["status"] == "complete", out[-3000:]
    assert len(metrics["epochs"]) == resumable(case)["num_train_epochs"]
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, len(metrics["epochs"]) + 1))
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
        subprocess.run(["scancel", "--batch", "--signal=TERM", str(job.job_id)], env=sc.slurm_env(),
                       check=True, capture_output=True, timeout=30)
        wait_through_requeues(job, notice="preemption notice (5 s to go)")  # the cluster's KillWait
    out = job.output()
    assert re.search(rf"resuming from {re.escape(str(job.run_dir))}/checkpoint-(\d+) \(step \1\)", out)
    assert "attempt 2 of job" in out and "are lost" not in out, out[-3000:]
    metrics = metrics_of(job)
    assert metrics["status"] == "complete", out[-3000:]
    assert len(metrics["epochs"]) == EPOCHS_PREEMPTED
    assert_checkpoints_whole(job.run_dir)
    assert_nothing_left(job)


def test_one_node_job_requeued_by_hand_says_the_steps_it_lost(one_node, jobs):
    """`scontrol requeue` of a running job before its first checkpoint: the next attempt says
    how many steps of the first are lost (train.py's metrics say how far it got), and trains
    afresh."""
    args = cpu_args(one_node, **{**resumable(BASELINE), "save_steps": 10**6})  # no checkpoint
    with running(BASELINE, args, jobs) as job:
        wait_for_output(job, "{'loss': ")
        subprocess.run(["scontrol", "requeue", str(job.job_id)], env=sc.slurm_env(),
                       check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + JOB_TIMEOUT
        while "of the previous attempt are lost" not in job.output():
            assert time.monotonic() < deadline, job.tail()
            lift_requeue_hold(job, sc.job_info(job.job_id))
            time.sleep(0.5)
        first = metrics_of(job)  # the first attempt's, on SIGTERM
    out = job.output()
    assert first["status"] == "interrupted" and first["global_step"] >= 1, first
    step = first["global_step"]
    assert f"attempt 2 of job {job.job_id} (requeued 1 time(s))" in out, out[-3000:]
    assert (f"{step} step(s) of the previous attempt are lost (it reached step {step}): no "
            f"checkpoint: training starts afresh") in out, out[-3000:]
    assert_nothing_left(job)  # cancelled on leaving the block


def test_job_without_slurm_stopped_on_request_says_how_to_resume(tiny, job_env):
    """`bash baseline.slurm`, then `kill -USR1`: train.py saves and exits 75; the job says how
    to resume and exits 75 too (no SLURM to requeue it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    proc = subprocess.Popen(["bash", str(ROOT / "baseline" / "baseline.slurm"),
                             *cpu_args(tiny, train_samples=64, num_train_epochs=50)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "{'loss': " in line:
                proc.send_signal(signal.SIGUSR1)
                break
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


def test_job_failing_to_build_an_op_ends_with_the_cause(tiny, job_env, tmp_path):
    """A DeepSpeed op built where TMPDIR is full (an empty compile cache, a full tmpfs): the
    compiler's command fills train.py's reason; the job's last line names the cause instead.
    (Without SLURM: the job ends the same way; about a minute of compiling first.)"""
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(TMPDIR=str(full), COMPILE_CACHE=str(tmp_path / "empty-cache"))
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={full / 'fill'}", "bs=4k"], capture_output=True)
        out = subprocess.run(["bash", str(ROOT / "deepspeed-single-gpu" / "deepspeed-single-gpu.slurm"),
                              *cpu_args(tiny, num_train_epochs=1)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=JOB_TIMEOUT)
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)
    name = re.match(r"run (\S+) on ", out.stdout)[1]
    try:
        last = out.stdout.rstrip("\n").splitlines()[-1]
        assert out.returncode == 1, out.stdout[-3000:]
        assert last.startswith("error: building DeepSpeed's op deepspeed_shm_comm failed"), last
        assert last.endswith("No space left on device") and str(full) in last and len(last) < 400, last
    finally:
        if os.environ.get("KEEP_SLURM_JOB_FILES") != "1":
            shutil.rmtree(ROOT / "deepspeed-single-gpu" / "runs" / name, ignore_errors=True)
            for path in (ROOT / "deepspeed-single-gpu" / "log").glob(f"{name}*"):
                path.unlink()


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
    return {"PATH": f"{folder}{os.pathsep}{sc.slurm_env()['PATH']}"}


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
    assert sc.job_info(job.job_id)["NodeList"] == "n[1-2]"
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


def test_two_node_job_losing_a_node_ends_with_the_reason_then_resumes(two_nodes, jobs):
    """n2's network vanishes after the first checkpoint: the job's attempt ends within
    COLLECTIVE_TIMEOUT + 40 s (not SLURM's node timeout, minutes) with the reason, and the job
    requeues itself; the checkpoints saved before are whole and unchanged. Once the network is
    back, the next attempt resumes from them; warned before its time limit, it saves, requeues
    itself (train.py's 75 through srun) and resumes again, to the end."""
    cluster, tiny = two_nodes
    if cluster.mode != "2ns":
        pytest.skip("no network namespaces here (up.sh 2ns): no node's network to take away")
    # The job's default DeepSpeed config, ZeRO off: DeepSpeed runs its collectives on a copy of
    # the process group made without a timeout, which config.py hands --ddp_timeout on to
    # (torch's default would be 30 minutes for gloo).
    case = dataclasses.replace(MULTI_NODE_2x1_ZERO3, name="multi-node-2x1-zero0", zero_stage=0, env={
        "DS_CONFIG": "ds_config.json", "COLLECTIVE_TIMEOUT": str(TEST_COLLECTIVE_TIMEOUT)})
    args = cpu_args(tiny, **resumable(case))
    with running(case, args, jobs) as job:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not complete_checkpoints(job.run_dir):
            assert sc.job_info(job.job_id)["JobState"] in sc._ACTIVE, job.tail()
            assert time.monotonic() < deadline, job.tail()
            time.sleep(0.2)
        before = complete_checkpoints(job.run_dir)
        try:
            cluster.set_link("n2", up=False)
            t0 = time.monotonic()
            # the batch script has ended once the job leaves RUNNING (COMPLETING: SLURM still
            # waits to hear from n2's slurmd, which it cannot reach)
            while sc.job_info(job.job_id)["JobState"] == "RUNNING":
                assert time.monotonic() < t0 + 180, f"still running after 180 s\n{job.tail()}"
                time.sleep(0.5)
            ended = time.monotonic() - t0
            print(f"job {job.job_id} ended {ended:.1f} s after n2's network went down")
        finally:
            cluster.set_link("n2", up=True)
        lines = [line for line in job.output().rstrip("\n").splitlines()  # less SLURM's own
                 if not line.startswith("slurmstepd")]                        # about the requeue
        assert lines[-2].startswith("error: a collective operation timed out ("), job.tail()
        assert lines[-1] == (f"requeueing job {job.job_id} after a failure (restart 1 of at most 3): "
                             f"it resumes from the newest checkpoint in {job.run_dir}"), job.tail()
        assert ended < TEST_COLLECTIVE_TIMEOUT + 40, job.tail()
        assert {name: complete_checkpoints(job.run_dir).get(name) for name in before} == before
        assert_checkpoints_whole(job.run_dir)

        # The next attempt's first start may lose its task on n2 too: n2's slurmd, hearing
        # late that the attempt before (same job id) ended, kills what runs under that id.
        # The job requeues itself again: a lost node's retries are what this is about.
        wait_for_attempt(job, 2, "{'loss': ")
        warn(job)
        wait_through_requeues(job, failures=range(1, 3))
    # the job's default, with what this test measured beyond the wait: within 2 minutes
    assert COLLECTIVE_TIMEOUT_DEFAULT + (ended - TEST_COLLECTIVE_TIMEOUT) < 120
    assert f"COLLECTIVE_TIMEOUT=${{COLLECTIVE_TIMEOUT:-{COLLECTIVE_TIMEOUT_DEFAULT}}}" in \
        (job.folder / f"{case.stage}.slurm").read_text()
    out = job.output()
    assert "attempt 2 of job" in out and "attempt 3 of job" in out, out[-3000:]
    steps = sorted({int(s) for s in re.findall(rf"resuming from {re.escape(str(job.run_dir))}/"
                                               rf"checkpoint-(\d+) \(step \d+\)", out)})
    # (each rank says it) from the checkpoints before the network went, then from the request's
    assert len(steps) == 2 and steps[0] >= max(int(n.split("-")[1]) for n in before), out[-3000:]
    metrics = metrics_of(job)
    assert metrics["status"] == "complete" and metrics["slurm_job_id"] == str(job.job_id)
    assert len(metrics["epochs"]) == resumable(case)["num_train_epochs"]
    assert_checkpoints_whole(job.run_dir)
    assert_nothing_left(job)


def wait_for_attempt(job: Ran, attempt: int, text: str):
    """Until the job's log shows `text` after the line of its attempt `attempt` (requeued: its
    hold lifted, see wait_through_requeues)."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while text not in job.output().partition(f"attempt {attempt} of job {job.job_id}")[2]:
        info = sc.job_info(job.job_id)
        assert info["JobState"] in sc._ACTIVE, f"job {job.job_id} ended ({info['JobState']})\n{job.tail()}"
        assert time.monotonic() < deadline, f"no {text!r} in attempt {attempt}\n{job.tail()}"
        lift_requeue_hold(job, info)
        time.sleep(0.5)
