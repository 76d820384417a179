"""Shared fixtures: a tiny BLOOM, its tokenizer and SQuAD-format data, and the stages' runs on
it, each made once for the whole test run, by whichever worker and test file asks first."""
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

import forked_runs

pytest_plugins = ["stage_jobs"]  # the SLURM tests' fixtures: slurm, jobs, one_node, two_nodes

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["baseline", "deepspeed-single-gpu", "deepspeed-multi-gpu", "deepspeed-multi-node"]
DEEPSPEED_STAGES = STAGES[1:]
# DeepSpeed's launcher: beside this Python (a venv), else on the PATH (packages installed elsewhere)
DEEPSPEED = (str(Path(sys.executable).with_name("deepspeed"))
             if Path(sys.executable).with_name("deepspeed").is_file() else shutil.which("deepspeed"))
EPOCHS = 2

# Offline, quiet, deterministic: the tests never reach the hub. One OpenMP thread per process:
# the suite runs several processes at once on a machine of few cores, where each process's
# spinning OpenMP threads would take the cores from the others (a tiny model gains nothing
# from a second thread). Inductor's CPU kernels in scalar C++: its vectorised kernels take half as
# long again to compile on 2 cores, and compile nothing the GPU runs (Triton's kernels there).
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                  PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TORCHINDUCTOR_VEC_ISA_OK="0")


# The files that take longest, first: with `--dist loadfile --no-loadscope-reorder` pytest's
# workers take whole files in collection order, so the long ones start at once and the short
# ones fill in after them.
LONGEST_FIRST = ["test_stages.py", "test_slurm_one_node.py", "test_slurm_requeues.py",
                 "test_slurm_two_nodes.py", "test_resume.py", "test_families.py", "test_mistakes.py",
                 "test_bad_input.py", "test_fast_path.py", "test_plan.py", "test_tables.py", "test_docs.py"]


def pytest_collection_modifyitems(items):
    order = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: the rest as found


SHM_BUFFERS = "deepspeed_allreduce_buffer_*"


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the test run itself, not one of its workers
        session.config.shm_before = set(Path("/dev/shm").glob(SHM_BUFFERS))


def pytest_sessionfinish(session):
    """DeepSpeed on CPU leaves a 66 MB all-reduce buffer in /dev/shm for every rank of every run;
    a day of test runs filled a 24 GB machine's memory. The test run removes the ones it made,
    once every worker has finished (a worker's runs may still be using theirs)."""
    if hasattr(session.config, "shm_before"):
        for buffer in set(Path("/dev/shm").glob(SHM_BUFFERS)) - session.config.shm_before:
            buffer.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def shared(tmp_path_factory, pytestconfig):
    """A folder that all workers of this test run share (xdist's workers' temporary folders are
    siblings): what one worker makes there, the others use."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if hasattr(pytestconfig, "workerinput") else base


@contextlib.contextmanager
def made_once(folder: Path):
    """Yields True to the one worker that is to make `folder` (the others wait meanwhile, then
    get False: it is made). A worker that failed while making it leaves it to the next."""
    with FileLock(f"{folder}.lock"):
        done = folder.with_name(folder.name + ".made")
        if done.exists():
            yield False
            return
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        yield True
        done.touch()


@pytest.fixture(scope="session")
def tiny(shared):
    """Folder with model/ (tiny BLOOM + tokenizer) and data/ (train/validation JSONL), made once
    for the whole test run."""
    out = shared / "tiny"
    with made_once(out) as first:
        if first:
            subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny.py"), str(out)],
                           check=True, capture_output=True)
    return out


def tiny_args(tiny, **overrides):
    """train.py arguments for a quick run on the tiny model, on the CPU (asked for explicitly:
    a GPU job that sees no GPU is refused; on a GPU machine these runs stay on the CPU too)."""
    args = dict(model_name_or_path=tiny / "model", dataset_name_or_path=tiny / "data",
                train_samples=32, eval_samples=8, max_length=64, num_train_epochs=2,
                learning_rate=2e-3, seed=0,  # a high rate: the tiny model learns in 4 steps
                use_cpu=True)
    args.update(overrides)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_environments(ranks):
    """The environments DeepSpeed's launcher gives the `ranks` ranks it starts on one node
    (`deepspeed --num_gpus N`): train.py run as those ranks needs no launcher, whose two
    interpreters import torch before them (the jobs' SLURM tests run the launcher itself)."""
    port = str(free_port())
    return [{**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(ranks),
             "LOCAL_SIZE": str(ranks), "CROSS_RANK": "0", "CROSS_SIZE": "1",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port} for rank in range(ranks)]


def run_stage(stage, tiny, output_dir, ranks=None, extra=(), **overrides):
    """Run a stage's train.py for real, in its own process(es): alone (ranks None) or as
    DeepSpeed's `ranks` ranks; returns the completed process (the ranks' output together)."""
    args = tiny_args(tiny, output_dir=output_dir, num_train_epochs=EPOCHS, **overrides) + list(extra)
    envs = rank_environments(ranks) if ranks else [dict(os.environ)]
    return forked_runs.run([sys.executable, "train.py", *args], ROOT / stage, envs, timeout=600)


def job_without_slurm(script, args, env=None):
    """`bash <stage>.slurm ARGS` as on a workstation (no SLURM in its environment), read up to
    its first logged step: (the job's process, the lines it printed so far). The caller ends it."""
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith(("SLURM_", "SBATCH_"))}
    job = subprocess.Popen(["bash", str(script), *args], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in job.stdout:
        lines.append(line.rstrip("\n"))
        if "{'loss': " in line:
            break
    return job, lines


FAST = ["--fast_path", "True"]
RUNS = {  # name: (stage, deepspeed ranks or None, extra train.py arguments)
    "baseline": ("baseline", None, []),
    "zero0": ("deepspeed-single-gpu", 1, ["--deepspeed", "ds_config.json"]),
    "zero1": ("deepspeed-single-gpu", 1, ["--deepspeed", "ds_zero1.json"]),
    "zero2": ("deepspeed-single-gpu", 1, ["--deepspeed", "ds_zero2.json"]),
    "zero3": ("deepspeed-single-gpu", 1, ["--deepspeed", "ds_zero3.json"]),
    "zero2_offload": ("deepspeed-single-gpu", 1, ["--deepspeed", "ds_zero2_offload.json"]),
    "zero3_offload": ("deepspeed-single-gpu", 1, ["--deepspeed", "ds_zero3_offload.json"]),
    "zero3_2ranks": ("deepspeed-multi-gpu", 2, ["--deepspeed", "ds_zero3.json"]),
    "zero3_offload_2ranks": ("deepspeed-multi-gpu", 2, ["--deepspeed", "ds_zero3_offload.json"]),
    # the fast path in the workshop's sample order (only the batching differs) and grouped by length
    "fast_same_order": ("baseline", None, FAST + ["--train_sampling_strategy", "random"]),
    "fast": ("baseline", None, FAST),
    "zero2_fast_same_order": ("deepspeed-single-gpu", 1, ["--deepspeed", "ds_zero2.json"] + FAST
                              + ["--train_sampling_strategy", "random"]),
    # and with its blocks and loss compiled (on a GPU the fast path's default; without DeepSpeed:
    # tests/test_fast_path.py)
    "zero2_fast_compiled_same_order": ("deepspeed-single-gpu", 1, ["--deepspeed", "ds_zero2.json"]
                                       + FAST + ["--compile_blocks", "True",
                                                 "--train_sampling_strategy", "random"]),
}


@pytest.fixture(scope="session")
def runs(tiny, shared):
    """runs(name) -> (output dir, completed process) of RUNS[name], made once for the whole test
    run, by the first worker that asks (another that asks meanwhile waits for it).
    runs(name, stopped=True): the same run stopped on request after step 1 (exit 75, its
    checkpoint-1 to resume); copy it before changing it."""
    def get(name, stopped=False):
        out = shared / "runs" / (f"{name}-stopped" if stopped else name)
        process = out.with_name(out.name + ".json")  # beside the run: its folder is the run's own
        with made_once(out) as first:
            if first:
                stage, ranks, extra = RUNS[name]
                if stopped:
                    (out / "save-and-stop").touch()
                proc = run_stage(stage, tiny, out, ranks, extra)
                if stopped:
                    (out / "save-and-stop").unlink()
                process.write_text(json.dumps(dict(args=proc.args, returncode=proc.returncode,
                                                   stdout=proc.stdout, stderr=proc.stderr)))
        return out, subprocess.CompletedProcess(**json.loads(process.read_text()))
    return get


def metrics_of(run, exit_status=0):
    """The run_metrics.json of runs(name), its exit status checked."""
    out, proc = run
    assert proc.returncode == exit_status, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "run_metrics.json").read_text())


def in_process(argv, stage="baseline"):
    """train.py's main() in this process, in the stage's folder (a refusal costs no new
    interpreter): returns (exit status, stdout, stderr). The modules are the baseline's (the
    stages' copies are identical but for config.py's default DeepSpeed config, which an
    in-process test names with --deepspeed)."""
    if str(ROOT / "baseline") not in sys.path:
        sys.path.insert(0, str(ROOT / "baseline"))
    import train
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = [str(ROOT / stage / "train.py"), *map(str, argv)]
    os.chdir(ROOT / stage)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = train.main()
            except SystemExit as e:  # argparse's own (--help, a misspelled option)
                code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return code, out.getvalue(), err.getvalue()

