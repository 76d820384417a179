"""The stages' SLURM jobs as the tests submit them to a local cluster (tools/slurm-local): their
cases, the fixtures and the checks that tests/test_slurm_one_node.py and
tests/test_slurm_two_nodes.py share. Not a test module.

Each `<stage>.slurm` is submitted as written, from its stage folder as the README showed it,
from the repository root (`sbatch baseline/baseline.slurm`) or with `sbatch --chdir`. Only
what a CPU machine cannot give is overridden on sbatch's command line (--mem, --cpus-per-task,
--gres for the rank count); the tiny model and data go in through the job's own mechanisms:
arguments after the script's name reach train.py (with --use_cpu True: there is no GPU here),
DS_CONFIG / GPUS / COLLECTIVE_TIMEOUT / OUTPUT_DIR are read by the script. The jobs write into
the repository (log/, runs/ as on a cluster); the files of the job ids these tests ran are
removed at the end (KEEP_SLURM_JOB_FILES=1 keeps them for a post-mortem).

Each test file that submits jobs has its own cluster (its module's LAB: a name and ports), so
that pytest's workers run the files side by side; the two files' jobs are of different stages,
so their files never meet. Needs root and the Debian slurm/munge packages (installed by up.sh
when missing); skipped otherwise.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import slurm_cluster as sc
from conftest import ROOT, STAGES, tiny_args


# What a 2-core CPU machine cannot give the jobs' #SBATCH lines (the local cluster advertises
# 16 CPUs and 128 GiB per node, so the multi-GPU stages' --cpus-per-task=32 would be refused).
CPU_MACHINE = ["--mem=2G", "--cpus-per-task=1"]
JOB_TIMEOUT = 420          # s; a job here takes seconds to a few minutes (its ops built by make setup)
LEFTOVER_GRACE = 10        # s for a job's processes to be gone after it has ended
# variables the jobs read: none may leak in from the caller's shell
JOB_KNOBS = ("DS_CONFIG", "GPUS", "OUTPUT_DIR", "MASTER_PORT", "MASTER_ADDR", "RUN_NAME",
             "HOSTFILE", "SBATCH_EXPORT", "COLLECTIVE_TIMEOUT", "PREPARED", "JOB_STARTED_AT",
             "CONDA_DEFAULT_ENV")


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


def write_job(folder, name, body):
    path = folder / f"{name}.slurm"
    path.write_text("#!/bin/bash\n" + body.lstrip())
    return path


def environ(process: Path) -> bytes:
    try:
        return (process / "environ").read_bytes()
    except OSError:
        return b""


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def slurm(request):
    """slurm(mode) -> the local cluster in that mode ("1": localhost, "2ns": n1 + n2 in network
    namespaces) of the test module's LAB; it is (re)started only when the mode changes, and
    taken down at the end of the session."""
    lab, skipped = request.module.LAB, {}

    def use(mode):
        if mode in skipped:
            pytest.skip(skipped[mode])
        if lab.mode != mode:
            try:
                lab.up(mode, request)
            except pytest.skip.Exception as e:  # not root / no packages / no namespaces
                skipped[mode] = str(e)
                raise
        return lab
    return use


@dataclass
class Ran:
    """A job these tests submitted and released (so its files are ours to remove)."""
    case: Case
    lab: sc.Lab
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


class Jobs(list):
    """The jobs a test module ran (Ran), on its cluster."""
    def __init__(self, lab: sc.Lab):
        super().__init__()
        self.lab = lab


@pytest.fixture(scope="module")
def jobs(request):
    """Registry of the jobs run here; at the end: cancel any still active, remove their files
    (only theirs) and the runs/ folders that these tests created and left empty."""
    ran = Jobs(request.module.LAB)
    had_runs = {stage: (ROOT / stage / "runs").exists() for stage in STAGES}
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
def submit(case: Case, train_args: list, jobs: Jobs, before_release=None) -> Ran:
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
    lab = jobs.lab
    for _ in range(50):
        job_id = lab.submit(script, cwd=cwd, env_overrides=case.env,
                            sbatch_args=["--hold", *where, *CPU_MACHINE, *case.sbatch_args],
                            script_args=train_args)
        name = lab.job_info(job_id)["JobName"]
        if not job_files(case.stage, f"{name}-{job_id}"):
            break
        lab.cancel(job_id)  # a held job never started: it wrote nothing
    else:
        pytest.fail(f"{folder}: files of 50 earlier job ids in the way (log/, runs/)")
    job = Ran(case, lab, job_id, name)
    jobs.append(job)
    if before_release:
        before_release(job)
    try:
        lab.scontrol("release", str(job_id))
    except RuntimeError:
        lab.cancel(job_id)
        raise
    return job


def cancel_if_active(job: Ran):
    """scancel the job if it still runs: it, not a namesake (ids restart with the cluster)."""
    try:
        info = job.lab.job_info(job.job_id)
        if (info.get("JobState") in sc.ACTIVE and info.get("JobName") == job.job_name
                and Path(info.get("WorkDir", "/")).resolve() == job.workdir.resolve()):
            job.lab.cancel(job.job_id)
            job.lab.wait(job.job_id, timeout=60)
    except (RuntimeError, TimeoutError):
        pass  # the cluster is gone (mode switch, down.sh): so are its jobs


@contextlib.contextmanager
def running(case: Case, train_args: list, jobs: Jobs, before_release=None):
    """submit(); whatever happens in the block, the job does not outlive it."""
    job = submit(case, train_args, jobs, before_release)
    try:
        yield job
    finally:
        cancel_if_active(job)


def wait(job: Ran, timeout=JOB_TIMEOUT) -> tuple[str, str]:
    t0 = time.monotonic()
    state = job.lab.wait(job.job_id, timeout=timeout)
    job.seconds = time.monotonic() - t0
    print(f"job {job.job_id} ({job.case}): {state[0]} {state[1]} after {job.seconds:.1f} s")
    return state


def wait_for_output(job: Ran, text: str, timeout=JOB_TIMEOUT):
    """Until the job's log shows `text`, while the job is active."""
    deadline = time.monotonic() + timeout
    while text not in job.output():
        state = job.lab.job_info(job.job_id)["JobState"]
        assert state in sc.ACTIVE, f"job {job.job_id} ended ({state}) before {text!r}:\n{job.tail()}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s\n{job.tail()}"
        time.sleep(0.3)


def live_processes():
    """(pid, command line arguments, environment, working folder) of every live process on this
    machine but this one."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie holds nothing; its parent (if ours) is listed itself
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue  # gone meanwhile
        yield int(pid), args, env, cwd


def job_processes(job: Ran) -> list[str]:
    """Live processes of this job: their environment names it (SLURM_JOB_ID=<id> on our
    cluster's SLURM_CONF; inherited by everything the job starts, loggers and `sleep` included),
    or their command line names its run (runs/<name>-<id>, log/<name>-<id>...)."""
    ours = (f"SLURM_JOB_ID={job.job_id}".encode(), f"SLURM_CONF={job.lab.conf}".encode())
    names_run = re.compile(rf"(?:runs|log)/{re.escape(job.run_name)}(?![0-9])")
    found = []
    for pid, args, env, cwd in live_processes():
        cmd = " ".join(args)
        if all(tag in env for tag in ours) or names_run.search(cmd):
            found.append(f"pid {pid} cwd {cwd}: {cmd[:300]}")
    return found


def training_processes(run_dir: Path) -> list[int]:
    """The pids of train.py's processes writing into `run_dir` (their command line names it)."""
    return [pid for pid, args, _, _ in live_processes()
            if any(arg.endswith("train.py") for arg in args) and str(run_dir) in args]


def assert_nothing_left(job: Ran):
    """No process of the job is left once it has ended (after a short grace: the loggers'
    last `sleep 1`, or a launcher still ending its ranks, may outlive the job's state by ~1 s)."""
    t0 = time.monotonic()
    while (left := job_processes(job)) and time.monotonic() < t0 + LEFTOVER_GRACE:
        time.sleep(0.25)
    assert not left, (f"job {job.job_id} ({job.case}) ended, but {LEFTOVER_GRACE} s later these "
                      f"of its processes still run:\n" + "\n".join(left))
    print(f"job {job.job_id}: no process left after {time.monotonic() - t0:.1f} s")


def distinct_node_hostnames(lab: sc.Lab) -> bool:
    """Mode 2 without unshare (no CAP_SYS_ADMIN): both nodes keep the machine's hostname."""
    return not (lab.dir / "run" / "hosts_added").exists()


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
    if job.case.nodes > 1 and not distinct_node_hostnames(job.lab):  # both nodes wrote one file
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

    # the eval loss of every epoch: train.py's summary (the last one: the job prints it again
    # after the launchers' lines) and the Trainer's own log lines
    summary = re.findall(r"epoch (\d+): train_loss (\S+) eval_loss (\S+)", out)[-epochs:]
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
    # the job's last lines are the run's summary, also where launchers printed after it
    lines = out.rstrip("\n").splitlines()
    assert lines[-1] == f"metrics: {job.run_dir}/run_metrics.json" and lines[-2].startswith("job time "), job.tail()
    assert lines[-3].startswith("answers to ") and lines[-5].startswith("epoch 1: train_loss "), job.tail()
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
    # refused before training: nothing written, no folder left behind
    assert metrics_of(job) is None and not job.run_dir.exists(), job.tail()
    return job


def check_cancelled(case: Case, tiny: Path, jobs: list):
    # 64 samples x 50 epochs: minutes of training, cancelled after its first logged step
    with running(case, cpu_args(tiny, train_samples=64, num_train_epochs=50), jobs) as job:
        wait_for_output(job, "{'loss': ")
        assert job.lab.job_info(job.job_id)["JobState"] == "RUNNING"
        assert job_processes(job), "training runs, yet no process of the job was found"
        t0 = time.monotonic()
        job.lab.cancel(job.job_id)
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
    # the job's last line is the summary's: how it stopped, what next (but for the lines that
    # SLURM and the other nodes' launchers print as SLURM kills the cancelled step, whenever
    # that is: the launchers take seconds to end their ranks, and SLURM gives the job KillWait)
    ours = [line for line in job.output().rstrip("\n").splitlines()
            if not line.startswith(("srun: ", "slurmstepd")) and "[launch.py:" not in line]
    assert ours[-1] == (f"interrupted by SIGTERM after step {metrics['global_step']} of "
                        f"{metrics['max_steps']}: no checkpoint was saved: run again with "
                        f"--output_dir {job.run_dir} to start afresh"), job.tail()


def resumable(case: Case) -> dict:
    """cpu_args for a run long enough to be cut short (tens of seconds of training here),
    checkpointed every few dozen steps. It is evaluated every epoch by step count, so that
    the Trainer evaluates before it saves when both fall on one step (with eval_strategy
    "epoch" it saves first, and a run resumed from there never evaluates that epoch)."""
    steps_per_epoch = 64 // (16 * case.world_size)
    if case.world_size == 1:  # 2,400 steps: over a minute, longer than the time limit's
        epochs, every = 600, 125  # warning takes to come (at most 50 s)
    else:  # two ranks over gloo: 200 steps, 10 s or more, the first checkpoint after 1 s or more
        epochs, every = 100, 20
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
    import safetensors.torch  # torch: only where a test needs it, not in every worker
    for folder in sorted(run_dir.glob("checkpoint-*")):
        step = int(folder.name.split("-")[1])
        assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == step
        safetensors.torch.load_file(folder / "model.safetensors")  # whole, not cut off


def wait_through_requeues(job: Ran, notice="warning signal", failures: int | range = 0) -> Ran:
    """Wait for a job that requeues itself to complete; check that each requeue followed a
    checkpoint saved on `notice`, but `failures` of them (a count, or a range of counts), which
    followed a failure. SLURM holds a requeued job for two minutes before it may start again;
    the test lifts that hold (StartTime=now) so as not to wait, but only after a few seconds: a
    job started within the second of its requeue is refused ("Job credential revoked")."""
    restarts = 0
    deadline = time.monotonic() + 3 * JOB_TIMEOUT
    while (info := job.lab.job_info(job.job_id))["JobState"] in sc.ACTIVE:
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
        job.lab.scontrol("update", f"JobId={job.job_id}", "StartTime=now", check=False)


