"""Every stage's SLURM job, submitted with real sbatch to a local cluster (tools/slurm-local).

Each `<stage>.slurm` is submitted as written, from inside its stage folder as users do. Only
what a CPU machine cannot give is overridden on sbatch's command line (--mem, --cpus-per-task,
--gres for the rank count); the tiny model and data go in through the job's own mechanisms:
arguments after the script's name reach train.py, DS_CONFIG / GPUS are read by the script.
The jobs write into the stage folders (log/, runs/ as on a cluster); the files of the job ids
these tests ran are removed at the end (KEEP_SLURM_JOB_FILES=1 keeps them for a post-mortem).

One node (mode "1") first, then two nodes n1, n2 (mode "2"): one mode switch per run.
Needs root and the Debian slurm/munge packages (installed by up.sh when missing); skipped
otherwise. DeepSpeed jobs use the default op cache ($HOME/.cache/torch_extensions): the first
run on a fresh machine compiles an op (~40 s), later runs reuse it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
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
JOB_TIMEOUT = 420          # s; a fresh machine first compiles DeepSpeed's shm op (~40 s)
LEFTOVER_GRACE = 10        # s for a job's processes to be gone after it has ended
# variables the jobs read: none may leak in from the caller's shell
JOB_KNOBS = ("DS_CONFIG", "GPUS", "OUTPUT_DIR", "MASTER_PORT", "MASTER_ADDR", "RUN_NAME",
             "HOSTFILE", "SBATCH_EXPORT")


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

    def __str__(self):
        return self.name


BASELINE = Case("baseline", "baseline")
SINGLE_GPU_ZERO3 = Case("single-gpu-zero3", "deepspeed-single-gpu",
                        env={"DS_CONFIG": "ds_zero3.json"}, zero_stage=3)
# 2 GPUs in the allocation: the job takes its process count from it (SLURM_GPUS_ON_NODE)
MULTI_GPU_2_ZERO2 = Case("multi-gpu-2ranks-zero2", "deepspeed-multi-gpu",
                         env={"DS_CONFIG": "ds_zero2.json"}, sbatch_args=("--gres=gpu:2",),
                         world_size=2, zero_stage=2)
# the script's --nodes=2, one rank per node: srun + deepspeed --no_ssh on n1 and n2, gloo
MULTI_NODE_2x1_ZERO3 = Case("multi-node-2x1-zero3", "deepspeed-multi-node",
                            env={"DS_CONFIG": "ds_zero3.json"}, sbatch_args=("--gres=gpu:1",),
                            world_size=2, nodes=2, zero_stage=3)


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def slurm(request):
    """slurm(mode) -> the local cluster in that mode ("1": localhost, "2": n1 + n2); it is
    (re)started only when the mode changes, and taken down at the end of the session."""
    state = {}

    def use(mode):
        if "skip" in state:
            pytest.skip(state["skip"])
        if state.get("mode") != mode:
            try:
                state["cluster"] = sc.cluster(mode, request)
            except pytest.skip.Exception as e:  # not root / no packages: same answer for all
                state["skip"] = str(e)
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
    def folder(self) -> Path:
        return ROOT / self.case.stage

    @property
    def run_name(self) -> str:  # the scripts' RUN_NAME: <job name>-<job id>
        return f"{self.job_name}-{self.job_id}"

    @property
    def out(self) -> Path:
        return self.folder / "log" / f"{self.run_name}.out"

    @property
    def run_dir(self) -> Path:
        return self.folder / "runs" / self.run_name

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else "(no .out file)"

    def tail(self, n=40) -> str:
        return "\n".join(self.output().splitlines()[-n:])


def job_files(folder: Path, run_name: str) -> list[Path]:
    """What a job named run_name wrote: log/<run>.out, log/<run>-*.csv, log/<run>.hostfile,
    runs/<run>/ (run_name = <job name>-<job id>, so job 1 never matches job 10's files)."""
    log = folder / "log"
    found = [p for p in (log / f"{run_name}.out", log / f"{run_name}.hostfile",
                         folder / "runs" / run_name) if p.exists()]
    return found + sorted(log.glob(f"{run_name}-*"))


@pytest.fixture(scope="module")
def jobs():
    """Registry of the jobs run here; at the end: cancel any still active, remove their files
    (only theirs) and the runs/ folders that these tests created and left empty."""
    ran: list[Ran] = []
    had_runs = {stage: (ROOT / stage / "runs").exists()
                for stage in ("baseline", "deepspeed-single-gpu", "deepspeed-multi-gpu",
                              "deepspeed-multi-node")}
    yield ran
    for job in ran:
        cancel_if_active(job)
    if os.environ.get("KEEP_SLURM_JOB_FILES") == "1":
        return
    for job in ran:
        for path in job_files(job.folder, job.run_name):
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
    """The cluster in mode "2" (n1, n2) and the tiny model/data folder."""
    slurm("2")
    return request.getfixturevalue("tiny")


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
def submit(case: Case, train_args: list, jobs: list) -> Ran:
    """sbatch the stage's job from its folder (held first: job ids restart at 1 whenever the
    cluster restarts, and a job must not find an earlier run's runs/<name>-<id> and resume from
    it; such an id is cancelled before it runs and the next one taken), then release it."""
    folder = ROOT / case.stage
    for _ in range(50):
        job_id = sc.submit(f"{case.stage}.slurm", cwd=folder, env_overrides=case.env,
                           sbatch_args=["--hold", *CPU_MACHINE, *case.sbatch_args],
                           script_args=train_args)
        name = sc.job_info(job_id)["JobName"]
        if not job_files(folder, f"{name}-{job_id}"):
            break
        sc.cancel(job_id)  # a held job never started: it wrote nothing
    else:
        pytest.fail(f"{folder}: files of 50 earlier job ids in the way (log/, runs/)")
    r = subprocess.run(["scontrol", "release", str(job_id)], env=sc.slurm_env(),
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        sc.cancel(job_id)
        raise RuntimeError(f"scontrol release {job_id}: {r.stderr.strip()}")
    job = Ran(case, job_id, name)
    jobs.append(job)
    return job


def cancel_if_active(job: Ran):
    """scancel the job if it still runs: it, not a namesake (ids restart with the cluster)."""
    try:
        info = sc.job_info(job.job_id)
        if (info.get("JobState") in sc._ACTIVE and info.get("JobName") == job.job_name
                and Path(info.get("WorkDir", "/")).resolve() == job.folder.resolve()):
            sc.cancel(job.job_id)
            sc.wait(job.job_id, timeout=60)
    except (RuntimeError, TimeoutError):
        pass  # the cluster is gone (mode switch, down.sh): so are its jobs


@contextlib.contextmanager
def running(case: Case, train_args: list, jobs: list):
    """submit(); whatever happens in the block, the job does not outlive it."""
    job = submit(case, train_args, jobs)
    try:
        yield job
    finally:
        cancel_if_active(job)


def wait(job: Ran) -> tuple[str, str]:
    t0 = time.monotonic()
    state = sc.wait(job.job_id, timeout=JOB_TIMEOUT)
    job.seconds = time.monotonic() - t0
    print(f"job {job.job_id} ({job.case}): {state[0]} {state[1]} after {job.seconds:.1f} s")
    return state


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


def hosts_of(job: Ran) -> set[str]:
    """The nodes' hostnames as the job saw them (`hostname -s`)."""
    if job.case.nodes == 1:
        m = re.search(rf"^run {re.escape(job.run_name)} on (\S+?),", job.output(), re.M)
        assert m, f"no 'run {job.run_name} on HOST' line:\n{job.tail()}"
        return {m.group(1)}
    return {"n1", "n2"}


def distinct_node_hostnames() -> bool:
    """Mode 2 without unshare (no CAP_SYS_ADMIN): both nodes keep the machine's hostname."""
    return not (sc.LAB / "run" / "hosts_added").exists()


def assert_memory_logs(job: Ran):
    """Host memory CSV of every node, with rows; GPU CSVs only where nvidia-smi works."""
    log, out = job.folder / "log", job.output()
    hosts = hosts_of(job) if (job.case.nodes == 1 or distinct_node_hostnames()) else None
    host_csvs = sorted(log.glob(f"{job.run_name}-host-memory-*.csv"))
    if hosts is not None:
        assert {p.name for p in host_csvs} == {f"{job.run_name}-host-memory-{h}.csv" for h in hosts}
    else:
        assert host_csvs
    for csv in host_csvs:
        rows = csv.read_text().splitlines()
        assert rows[0] == "timestamp,rss_mib" and len(rows) >= 2, f"{csv.name}: {rows}"
        assert all(re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d,\d+", r) for r in rows[1:]), rows
    gpu_csvs = sorted(log.glob(f"{job.run_name}-gpu-memory-*.csv"))
    if HAVE_NVIDIA_SMI:
        assert gpu_csvs, f"nvidia-smi works but no GPU memory CSV in {log}"
    else:
        assert not gpu_csvs, gpu_csvs
        notice = "nvidia-smi not found or no GPU: GPU memory is not logged; training anyway"
        if job.case.nodes == 1:
            assert notice in out
        else:  # each node's run_node says it, prefixed with its hostname
            assert out.count(notice) == job.case.nodes, job.tail()
            for host in hosts or ():
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


# ---------------------------------------------------------------------------------- checks
def check_completes(case: Case, tiny: Path, jobs: list):
    epochs = 2
    with running(case, tiny_args(tiny, num_train_epochs=epochs), jobs) as job:
        state = wait(job)
    out = job.output()
    assert state == ("COMPLETED", "0:0"), f"job {job.job_id}: {state}\n{job.tail()}"
    assert f"output in runs/{job.run_name}" in out

    # the eval loss of every epoch: train.py's summary and the Trainer's own log lines
    summary = re.findall(r"epoch (\d+): train_loss (\S+) eval_loss (\S+)", out)
    assert [int(e) for e, _, _ in summary] == list(range(1, epochs + 1)), job.tail()
    assert len(re.findall(r"\{'eval_loss': '[-0-9.e]+'", out)) == epochs, job.tail()

    metrics = metrics_of(job)
    assert metrics is not None, f"no {job.run_dir}/run_metrics.json\n{job.tail()}"
    assert metrics["complete"] is True
    assert metrics["stage"] == case.stage and metrics["slurm_job_id"] == str(job.job_id)
    assert metrics["world_size"] == case.world_size
    assert metrics["nodes"] == case.nodes
    assert metrics["zero_stage"] == case.zero_stage
    assert metrics["deepspeed_config"] == case.env.get("DS_CONFIG")
    assert metrics["precision"] == "fp32"
    assert [e["eval_loss"] for e in metrics["epochs"]] == \
           pytest.approx([float(v) for _, _, v in summary], abs=5e-5)
    assert len(metrics["peak_host_rss_mib"]) == case.world_size  # gathered from every rank

    assert_memory_logs(job)
    assert_nothing_left(job)
    assert_model_reloads(job, tiny)
    return job


def check_fails(case: Case, tiny: Path, jobs: list):
    with running(case, tiny_args(tiny, dataset_name_or_path="./nope"), jobs) as job:
        state, code = wait(job)
    assert state == "FAILED" and code != "0:0", f"job {job.job_id}: {state} {code}\n{job.tail()}"
    # the reason (from each rank that got that far before the others were ended); two ranks
    # write to one .out at once, so a line may carry the other rank's text before or after it
    reasons = re.findall(r"error: dataset folder \./nope does not exist", job.output())
    assert 1 <= len(reasons) <= case.world_size, job.tail()
    assert_nothing_left(job)
    assert_memory_logs(job)  # the loggers ran, and (above) were stopped
    metrics = metrics_of(job)
    assert metrics is None or metrics["complete"] is False


def check_cancelled(case: Case, tiny: Path, jobs: list):
    # 64 samples x 50 epochs: minutes of training, cancelled after its first logged step
    with running(case, tiny_args(tiny, train_samples=64, num_train_epochs=50), jobs) as job:
        deadline = time.monotonic() + JOB_TIMEOUT
        while "{'loss': " not in job.output():
            state = sc.job_info(job.job_id)["JobState"]
            assert state in sc._ACTIVE, f"job {job.job_id} ended: {state}\n{job.tail()}"
            assert time.monotonic() < deadline, f"no training step after {JOB_TIMEOUT} s\n{job.tail()}"
            time.sleep(0.3)
        assert sc.job_info(job.job_id)["JobState"] == "RUNNING"
        assert job_processes(job), "training runs, yet no process of the job was found"
        t0 = time.monotonic()
        sc.cancel(job.job_id)
        state, _ = wait(job)
    assert state == "CANCELLED", job.tail()
    assert time.monotonic() - t0 < 30
    assert_nothing_left(job)
    assert_memory_logs(job)
    # train.py leaves through SystemExit on SIGTERM: its metrics say how far it got
    metrics = metrics_of(job)
    assert metrics is not None and metrics["complete"] is False, job.tail()
    assert metrics["global_step"] >= 1 and metrics["stopped_on_request_at_step"] is None


def resumable(case: Case) -> dict:
    """tiny_args for a run long enough to be cut short (tens of seconds of training here),
    checkpointed every few dozen steps. It is evaluated every epoch by step count, so that
    the Trainer evaluates before it saves when both fall on one step (with eval_strategy
    "epoch" it saves first, and a run resumed from there never evaluates that epoch)."""
    steps_per_epoch = 64 // (16 * case.world_size)
    if case.world_size == 1:  # ~25 steps/s: 960 steps, longer than the time limit's warning
        epochs, every = 240, 125
    else:  # two ranks over gloo, a few steps/s
        epochs, every = 16, 25
    return dict(train_samples=64, num_train_epochs=epochs, save_strategy="steps",
                save_steps=every, eval_strategy="steps", eval_steps=steps_per_epoch)


def check_resumes(case: Case, tiny: Path, jobs: list, references: dict, cut_short,
                  cut_sbatch_args=()):
    """A job (with cut_sbatch_args) cut short by `cut_short` (scancel, or the time limit) and
    run on in the same output folder ends with the eval losses of an uninterrupted job of the
    same seed, and its checkpoints are whole (trainer_state.json of their step, weights that
    load)."""
    args = tiny_args(tiny, **resumable(case))
    if case.name not in references:
        with running(case, args, jobs) as job:
            assert wait(job) == ("COMPLETED", "0:0"), job.tail()
        references[case.name] = metrics_of(job)
    cut = dataclasses.replace(case, sbatch_args=case.sbatch_args + tuple(cut_sbatch_args))
    with running(cut, args, jobs) as job:
        resumed = cut_short(job, args, jobs)
    out = job.output() + (resumed.output() if resumed is not job else "")
    assert re.search(rf"resuming from runs/{re.escape(job.run_name)}/checkpoint-(\d+) "
                     rf"\(step \1\)", out), out[-3000:]
    metrics = metrics_of(job)  # a job sbatched again writes into the first job's folder
    assert metrics["complete"] is True, out[-3000:]
    uninterrupted = references[case.name]
    assert len(metrics["epochs"]) == len(uninterrupted["epochs"]) == resumable(case)["num_train_epochs"]
    # Without ZeRO-3 the resumed run is bit for bit the uninterrupted one. ZeRO-3 re-partitions
    # the parameters when it resumes and sums some gradients in another order: the eval loss
    # moved by ~1e-7 after a resume, which 400 steps at the tiny model's high learning rate
    # grew to ~1e-5.
    tolerance = 1e-4 if case.zero_stage == 3 else 1e-6
    for ours, theirs in zip(uninterrupted["epochs"], metrics["epochs"]):
        assert theirs["eval_loss"] == pytest.approx(ours["eval_loss"], rel=tolerance)
    for folder in sorted(job.run_dir.glob("checkpoint-*")):
        step = int(folder.name.split("-")[1])
        assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == step
        load_file(folder / "model.safetensors")  # whole, not cut off
    assert_nothing_left(resumed)
    return job, resumed


def complete_checkpoints(run_dir: Path) -> dict:
    """checkpoint folder name -> digest of all its files, for the complete checkpoints."""
    return {folder.name: hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*"))
                                                if p.is_file())).hexdigest()
            for folder in run_dir.glob("checkpoint-*") if (folder / "trainer_state.json").is_file()}


def scancel_then_sbatch_again(job: Ran, args: list, jobs: list) -> Ran:
    """scancel the job once it has written a checkpoint, then sbatch it again with OUTPUT_DIR
    set to its output folder (as the README says); no complete checkpoint is lost or changed."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while not complete_checkpoints(job.run_dir):
        assert sc.job_info(job.job_id)["JobState"] in sc._ACTIVE, job.tail()
        assert time.monotonic() < deadline, job.tail()
        time.sleep(0.2)
    sc.cancel(job.job_id)
    assert wait(job)[0] == "CANCELLED", job.tail()
    assert_nothing_left(job)
    before = complete_checkpoints(job.run_dir)
    again = dataclasses.replace(job.case, env={**job.case.env, "OUTPUT_DIR": f"runs/{job.run_name}"})
    with running(again, args, jobs) as resumed:
        assert wait(resumed) == ("COMPLETED", "0:0"), resumed.tail()
    after = complete_checkpoints(job.run_dir)
    assert {name: after.get(name) for name in before} == before
    return resumed


def time_limit_then_requeue(job: Ran, args: list, jobs: list) -> Ran:
    """Let the job meet its time limit (a minute, warned by --signal): it saves, requeues
    itself and resumes, as often as it takes."""
    return wait_through_requeues(job)


def warned_by_hand_then_requeue(job: Ran, args: list, jobs: list) -> Ran:
    """Send the job's batch script SLURM's warning signal by hand once training runs (what
    --signal=B:USR1@N does N seconds before the time limit): it saves, requeues, resumes."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while "{'loss': " not in job.output():
        assert sc.job_info(job.job_id)["JobState"] in sc._ACTIVE, job.tail()
        assert time.monotonic() < deadline, job.tail()
        time.sleep(0.3)
    subprocess.run(["scancel", "--batch", "--signal=USR1", str(job.job_id)], env=sc.slurm_env(),
                   check=True, capture_output=True, timeout=30)
    return wait_through_requeues(job)


def wait_through_requeues(job: Ran) -> Ran:
    """Wait for a job that requeues itself to complete; check that each requeue followed a
    warning and a checkpoint. SLURM holds a requeued job for two minutes before it may start
    again; the test lifts that hold (StartTime=now) so as not to wait, but only after a few
    seconds: a job started within the second of its requeue is refused ("Job credential
    revoked")."""
    restarts, pending_since = 0, None
    deadline = time.monotonic() + 3 * JOB_TIMEOUT
    while (info := sc.job_info(job.job_id))["JobState"] in sc._ACTIVE:
        assert time.monotonic() < deadline, job.tail()
        restarts = int(info.get("Restarts", 0))
        if info["JobState"] != "PENDING" or not restarts:
            pending_since = None
        elif pending_since is None:
            pending_since = time.monotonic()
        elif time.monotonic() > pending_since + 3:
            subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"],
                           env=sc.slurm_env(), capture_output=True, timeout=30)
        time.sleep(0.5)
    out = job.output()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), job.tail()
    assert restarts >= 1 and out.count("requeueing job") == restarts, job.tail()
    assert out.count("warning signal: saving a checkpoint and stopping") >= restarts
    assert len(re.findall(r"stopped on request .* after step \d+", out)) == restarts
    return job


# ---------------------------------------------------------------------------------- one node
ONE_NODE = [BASELINE, SINGLE_GPU_ZERO3, MULTI_GPU_2_ZERO2]


@pytest.mark.parametrize("case", ONE_NODE, ids=str)
def test_one_node_job_completes(case, one_node, jobs):
    job = check_completes(case, one_node, jobs)
    if case.world_size > 1:  # the count came from the allocation's --gres=gpu:2
        assert f"{case.world_size} processes" in job.output()
        assert "dist_world_size=2" in job.output()


@pytest.mark.parametrize("case", ONE_NODE, ids=str)
def test_one_node_job_fails_cleanly(case, one_node, jobs):
    check_fails(case, one_node, jobs)


@pytest.mark.parametrize("case", [BASELINE, MULTI_GPU_2_ZERO2], ids=str)
def test_one_node_job_cancelled_cleanly(case, one_node, jobs):
    check_cancelled(case, one_node, jobs)


def check_more_gpus_than_allocated(case: Case, tiny: Path, jobs: list):
    """GPUS=N above the allocation's GPU count: refused with one line before anything runs."""
    allocated = int(next(a for a in case.sbatch_args if a.startswith("--gres=gpu:")).split(":")[-1])
    asked = dataclasses.replace(case, env={**case.env, "GPUS": str(allocated + 2)})
    with running(asked, tiny_args(tiny), jobs) as job:
        state = wait(job)
    assert state == ("FAILED", "1:0"), job.tail()
    assert f"error: GPUS={allocated + 2} but this allocation has {allocated} GPU(s)" in job.output()
    assert "train.py" not in job.output() and not job.run_dir.exists()
    assert_nothing_left(job)


def test_one_node_job_asking_more_gpus_than_allocated_is_refused(one_node, jobs):
    check_more_gpus_than_allocated(MULTI_GPU_2_ZERO2, one_node, jobs)


@pytest.fixture(scope="module")
def references():
    """case name -> run_metrics.json of its uninterrupted resumable() job, made on first use."""
    return {}


# a minute, and the warning as late as SLURM can promise it (it checks about every 30 s)
TIME_LIMIT = ("--time=1", "--signal=B:USR1@40")


def test_one_node_job_scancelled_resumes_when_sbatched_again(one_node, jobs, references):
    # ZeRO-3 and offload resume through the same train.py: tests/test_stages.py
    check_resumes(BASELINE, one_node, jobs, references, scancel_then_sbatch_again)


def test_one_node_job_at_its_time_limit_saves_requeues_and_resumes(one_node, jobs, references):
    check_resumes(BASELINE, one_node, jobs, references, time_limit_then_requeue, TIME_LIMIT)


# ---------------------------------------------------------------------------------- two nodes
def test_two_node_job_completes(two_nodes, jobs):
    job = check_completes(MULTI_NODE_2x1_ZERO3, two_nodes, jobs)
    out = job.output()
    assert sc.job_info(job.job_id)["NodeList"] == "n[1-2]"
    assert (job.folder / "log" / f"{job.run_name}.hostfile").read_text().split("\n") == \
           ["n1 slots=1", "n2 slots=1", ""]
    assert f"run {job.run_name} on n1, 2 node(s) x 1 processes" in out
    # one launcher per node (node ranks 0 and 1), one rank each, on gloo over n1 <-> n2
    for rank in (0, 1):
        assert f"nnodes=2, num_local_procs=1, node_rank={rank}" in out, job.tail()
    assert out.count("dist_world_size=2") == 2
    assert "'n1': [0], 'n2': [1]" in out


def test_two_node_job_fails_cleanly(two_nodes, jobs):
    check_fails(MULTI_NODE_2x1_ZERO3, two_nodes, jobs)


def test_two_node_job_cancelled_cleanly(two_nodes, jobs):
    check_cancelled(MULTI_NODE_2x1_ZERO3, two_nodes, jobs)


def test_two_node_job_asking_more_gpus_than_allocated_is_refused(two_nodes, jobs):
    check_more_gpus_than_allocated(MULTI_NODE_2x1_ZERO3, two_nodes, jobs)


def test_two_node_job_warned_saves_requeues_and_resumes(two_nodes, jobs, references):
    check_resumes(MULTI_NODE_2x1_ZERO3, two_nodes, jobs, references, warned_by_hand_then_requeue)
