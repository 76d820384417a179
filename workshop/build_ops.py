"""Build DeepSpeed's C++ ops that this machine's runs load, once, into the compile cache of this
Python environment (workshop.run.use_compile_caches), so that no job or test builds one:

    python -m workshop.build_ops        # make setup runs it

Without a GPU: the shared-memory collective that DeepSpeed's CPU accelerator loads at start
and CPU Adam (optimizer offload). With a GPU: CPU Adam. Each is a minute or two on 2 cores.

An op is built by torch's JIT with `ninja`, and ninja rebuilds everything when the build log
was written by another ninja version ("build log version is too old"): a login node's system
ninja and the environment's own (pip's, which DeepSpeed brings) do not share builds. So the
builds and the jobs both take the environment's ninja, first on PATH (environment_tools),
whichever shell started them, and a job says before it builds one (pending)."""
import json
import os
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


def main():
    from workshop.run import use_compile_caches
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
        builder.load(verbose=False)
        record_time(builder, time.time() - start)
        print(f"{builder.NAME}: ready ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
