"""Build DeepSpeed's C++ ops that this machine's runs load, once, into the compile cache of this
Python environment (workshop/compile_cache.py), so that no job or test builds one:

    python -m workshop.build_ops        # make setup runs it

Without a GPU: the shared-memory collective that DeepSpeed's CPU accelerator loads at start
and CPU Adam (optimizer offload). With a GPU: CPU Adam. Each is a minute or two on 2 cores.

An op is built by torch's JIT with `ninja`, and ninja rebuilds everything when the build log
was written by another ninja version ("build log version is too old"): a login node's system
ninja and the environment's own (pip's, which DeepSpeed brings) do not share builds. So the
builds and the jobs both take the environment's ninja, first on PATH (environment_tools),
whichever shell started them, and a job says before it builds one (pending); a job loads
an op through load_op."""
import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

TIMES_FILE = "build-seconds.json"  # in TORCH_EXTENSIONS_DIR: how long each op took to build here


def environment_tools():
    """Put this Python environment's scripts folder (a venv's bin/: its ninja) first on PATH, so
    that torch's JIT builds every op with the ninja the jobs use, activated or not."""
    scripts = sysconfig.get_path("scripts")
    path = os.environ.get("PATH", "").split(os.pathsep)
    if path[:1] != [scripts]:
        os.environ["PATH"] = os.pathsep.join([scripts] + [p for p in path if p != scripts])


def pending(builder):
    """Why loading `builder`'s op would build it (not built yet, or ninja would rebuild it: the
    first line ninja's dry run says), or None when it would load as built."""
    folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR", ".")) / builder.NAME
    if not any(folder.glob("*.so")):
        return "not built yet"
    try:
        dry = subprocess.run(["ninja", "-n"], cwd=folder, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ninja cannot check it ({e})"
    said = (dry.stdout + dry.stderr).strip().splitlines()
    if dry.returncode == 0 and said[-1:] == ["ninja: no work to do."]:
        return None
    return next((line.removeprefix("ninja: ") for line in said if line.startswith("ninja: ")),
                "its sources or build commands changed")


def cpu_kind():
    """A key for this node's kind of CPU: its architecture, model and instruction-set flags
    (what DeepSpeed's op builders choose their compiler flags from), or None where unknown."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    wanted = ("model name", "flags", "Features", "CPU part")  # x86's; Arm's
    first = {line.split(":")[0].strip(): line for line in reversed(lines) if ":" in line}
    said = [platform.machine()] + [first[name] for name in wanted if name in first]
    return hashlib.sha1("\n".join(said).encode()).hexdigest()[:12]


@contextlib.contextmanager
def cpu_info_read_once():
    """DeepSpeed's op builders ask py-cpuinfo twice for every op they load (to choose -march
    and the SIMD width; each answer starts another interpreter: about a second on 2 cores, in
    every rank of every job). Meanwhile its answer is read once per kind of CPU and kept beside
    the ops (TORCH_EXTENSIONS_DIR), so a rank loads its built ops without asking again."""
    try:
        import cpuinfo
    except ImportError:  # DeepSpeed then asks lscpu
        yield
        return
    asked = cpuinfo.get_cpu_info
    kind = cpu_kind()
    kept = Path(os.environ.get("TORCH_EXTENSIONS_DIR", ".")) / f"cpuinfo-{kind}.json"

    @functools.cache
    def read():
        if kind is None:  # no key to keep it under: asked once for this load
            return asked()
        with contextlib.suppress(OSError, ValueError):
            return json.loads(kept.read_text())
        info = asked()
        with contextlib.suppress(OSError):  # whole or not at all: ranks read it
            written = kept.with_name(f"{kept.name}.{os.getpid()}")
            written.write_text(json.dumps(info))
            written.replace(kept)
        return info

    cpuinfo.get_cpu_info = read
    try:
        yield
    finally:
        cpuinfo.get_cpu_info = asked


def expected_seconds(builder):
    """What building the op is expected to take: its last build here, else a range."""
    times = read_times()
    return (f"about {times[builder.NAME]:.0f} s, as its last build here" if builder.NAME in times
            else "one to four minutes on 2 cores")


def read_times():
    try:
        return json.loads((Path(os.environ["TORCH_EXTENSIONS_DIR"]) / TIMES_FILE).read_text())
    except (KeyError, OSError, ValueError):
        return {}


def record_time(builder, seconds):
    times = read_times()
    times[builder.NAME] = round(seconds, 1)
    path = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / TIMES_FILE
    path.write_text(json.dumps(times, indent=1) + "\n")


def load_op(name, clock=None):
    """Load one of DeepSpeed's ops with this environment's build tools, building it only where
    it is not built for them (said first, on one line, with why and how long it takes, and
    counted as compiling on the run's clock); a failed build ends with its cause, not the
    compiler's command."""
    from deepspeed.accelerator import get_accelerator
    environment_tools()
    builder = get_accelerator().create_op_builder(name)
    folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR", "."))
    why, started = pending(builder), time.time()
    if why:
        print(f"building DeepSpeed's {builder.NAME} op into {folder} ({why}): {expected_seconds(builder)}, "
              f"once per environment (make setup builds it beforehand: python -m workshop.build_ops)", flush=True)
    try:
        with clock.timing("compiling") if why and clock else contextlib.nullcontext(), cpu_info_read_once():
            loaded = builder.load(verbose=False)
    except Exception as e:  # the compiler's own lines are above; its cause, in one line:
        # TMPDIR as the compiler reads it (tempfile.gettempdir() passes over a full one)
        places = {folder, Path(os.environ.get("TMPDIR", "/tmp"))}
        free = {p: shutil.disk_usage(p).free for p in places if p.exists()}
        full = [f"{p} has {n // 2**20} MiB free" for p, n in free.items() if n < 200 * 2**20]
        cause = (f"{'; '.join(full)}: No space left on device" if full else
                 (str(e).strip().splitlines() or [type(e).__name__])[-1][:200])
        raise OSError(f"building DeepSpeed's op {builder.NAME} failed (free space or point TMPDIR "
                      f"and COMPILE_CACHE elsewhere, then python -m workshop.build_ops): {cause}") from None
    if why:
        with contextlib.suppress(OSError):
            record_time(builder, time.time() - started)
    return loaded


def main():
    from workshop.compile_cache import use_compile_caches
    use_compile_caches()
    environment_tools()
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator
    names = ["CPUAdamBuilder"] + (["ShareMemCommBuilder"] if get_accelerator().device_name() == "cpu" else [])
    for name in names:
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not builder.is_compatible():
            print(f"{name}: not for this machine, skipped")
            continue
        why = pending(builder)
        if why is None:
            print(f"{builder.NAME}: built already in {os.environ['TORCH_EXTENSIONS_DIR']}", flush=True)
            continue
        start = time.time()
        print(f"building DeepSpeed's {builder.NAME} into {os.environ['TORCH_EXTENSIONS_DIR']} ({why}; "
              f"{expected_seconds(builder)}, once) ...", flush=True)
        with cpu_info_read_once():
            builder.load(verbose=False)
        record_time(builder, time.time() - start)
        print(f"{builder.NAME}: ready ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
