"""DeepSpeed's ops as `make setup` built them (python -m workshop.build_ops) load in a job without
a build: the job's ninja (the environment's) finds nothing to do in their build folders. An
op built by another ninja (a login node's older system ninja) would be rebuilt silently at
the first job that loads it; the check a job makes first says so."""
import os
import shutil
import subprocess
import sysconfig

import pytest

from workshop.build_ops import environment_tools, pending


@pytest.fixture
def job_environment():
    """This process's environment as a job's: its compile cache and its tools; restored after."""
    saved = dict(os.environ)
    from workshop.compile_cache import use_compile_caches
    use_compile_caches()
    environment_tools()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    yield
    os.environ.clear()
    os.environ.update(saved)


def builders():
    """The ops workshop.build_ops builds on this machine (a CPU: both)."""
    from deepspeed.accelerator import get_accelerator
    return [get_accelerator().create_op_builder(name) for name in ("CPUAdamBuilder", "ShareMemCommBuilder")]


def test_the_jobs_ninja_is_the_environments(job_environment):
    assert os.path.dirname(shutil.which("ninja")) == sysconfig.get_path("scripts")


def test_the_ops_setup_built_load_without_building(job_environment):
    for builder in builders():
        assert pending(builder) is None, (
            f"a job would build {builder.NAME} in {os.environ['TORCH_EXTENSIONS_DIR']}: "
            f"{pending(builder)} (make setup: python -m workshop.build_ops)")


def test_an_op_built_by_another_ninja_is_said_before_it_is_rebuilt(job_environment, tmp_path):
    """The build folder as an older ninja leaves it (its build log of version 5, ninja 1.11's):
    the environment's ninja would start over, and the check says why."""
    builder = builders()[1]
    built = os.path.join(os.environ["TORCH_EXTENSIONS_DIR"], builder.NAME)
    shutil.copytree(built, tmp_path / builder.NAME, symlinks=True)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(tmp_path)
    assert pending(builder) is None  # as setup left it
    log = tmp_path / builder.NAME / ".ninja_log"
    version = subprocess.run(["ninja", "--version"], capture_output=True, text=True).stdout
    if version.startswith("1.11"):
        pytest.skip("this environment's ninja writes version 5 logs itself")
    log.write_text("# ninja log v5\n" + log.read_text().split("\n", 1)[1])
    assert "build log version is too old" in pending(builder)
    (tmp_path / builder.NAME / f"{builder.NAME}.so").unlink()
    assert pending(builder) == "not built yet"


def test_an_offload_job_after_setup_builds_nothing(runs):
    """ZeRO-2 with optimizer offload loads CPU Adam (and, on the CPU, the shared-memory
    collective): after make setup, neither is built, and no time goes to compiling."""
    from conftest import metrics_of
    out, proc = runs("zero2_offload")
    metrics = metrics_of((out, proc))
    assert "building DeepSpeed's" not in proc.stdout + proc.stderr
    assert metrics["time_seconds"]["compiling"] == 0.0


def test_a_rank_loads_the_built_ops_asking_py_cpuinfo_at_most_once_per_kind_of_cpu(job_environment, monkeypatch):
    """DeepSpeed's builders ask py-cpuinfo for -march and the SIMD width at every load of an op
    (another interpreter each time: about a second apiece on 2 cores). Its answer is kept
    beside the ops: a rank asks at most once, the next rank on this kind of CPU nothing, and
    the compiler flags are those of a fresh answer (no rebuild)."""
    import cpuinfo
    from workshop.build_ops import cpu_info_read_once, load_op
    asked = []
    real = cpuinfo.get_cpu_info
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: asked.append(1) or real())
    builder = builders()[0]
    for name in ("ShareMemCommBuilder", "CPUAdamBuilder"):  # a rank (loaded: DeepSpeed's own cache)
        load_op(name)
    with cpu_info_read_once():
        builder.cxx_args()
        builder.cxx_args()
    assert len(asked) <= 1  # the first answer on this kind of CPU, unless setup kept it already
    asked.clear()
    with cpu_info_read_once():  # as the next rank
        flags = builder.cxx_args()
    assert asked == []
    assert flags == builder.cxx_args()  # py-cpuinfo asked anew
