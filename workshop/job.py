"""What the .slurm jobs (workshop/job.sh) ask Python, one line each, without torch:

    python -m workshop.job path                  # job.sh as installed: what every job sources
    python -m workshop.job names                 # the names train.py and job.sh share, as shell
    python -m workshop.job port ASKED            # a free rendezvous port, from ASKED on
    python -m workshop.job stop PID              # SIGTERM to PID and all its descendants
    python -m workshop.job training OUTPUT_DIR   # exit 0 while a rank of that run still runs here
    python -m workshop.job checkpoint OUTPUT_DIR # "STEP SECONDS" of the newest checkpoint
    python -m workshop.job resumes OUTPUT_DIR    # what a requeued job's next attempt starts from
    python -m workshop.job lost OUTPUT_DIR       # the steps a requeued attempt lost, if any
    python -m workshop.job summary LOG OFFSET STARTED OUTPUT_DIR  # train.py's summary, again last
    python -m workshop.job reason LOG OFFSET STARTED OUTPUT_DIR STATUS [MEMORY_CSV_PATTERN]
                                                 # why the training failed
"""
import glob
import os
import re
import shlex
import signal
import socket
import sys
import time
from pathlib import Path

import psutil

from workshop.host_memory import is_rank
from workshop.metrics import (METRICS_FILE, SAVE_AND_STOP_FILE, STOP_WITHOUT_SAVING_FILE, STOPPED_TO_RESUME,
                              checkpoint_step, newest_checkpoint, read_json, summary_lines)

# Lines that name what a failure came down to (a full disk while compiling DeepSpeed's ops):
# clearer than the error above them, which may be a compiler command of hundreds of characters.
CAUSES = re.compile(r"No space left on device|Disk quota exceeded|Read-only file system|"
                    r"Cannot allocate memory")

# srun's line for a node's task killed from outside (by SLURM, the kernel, an operator)
MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
KILLED = re.compile(r"srun: error: (\S+): tasks? [\d,-]+: Killed$")
# the deepspeed launcher's line for a rank that ended (negative: killed by that signal)
LAUNCHER_EXIT = re.compile(r"exits with return code = (-?\d+)")


def path():
    """job.sh of the installed package, for a job whose stage folder is anywhere."""
    return Path(__file__).with_name("job.sh")


def names():
    """The exit status and the request files that train.py and job.sh share, as shell
    assignments for job.sh to evaluate: one definition of each, here in the package."""
    shared = dict(STOPPED_TO_RESUME=STOPPED_TO_RESUME, SAVE_AND_STOP_FILE=SAVE_AND_STOP_FILE,
                  STOP_WITHOUT_SAVING_FILE=STOP_WITHOUT_SAVING_FILE)
    return "\n".join(f"{name}={shlex.quote(str(value))}" for name, value in shared.items())


def port(asked):
    """The first port from `asked` that is free here, as torch's rendezvous binds it."""
    if not str(asked).isdigit() or not 1024 <= int(asked) <= 65535:
        sys.exit(f"error: MASTER_PORT={asked}: give a port number between 1024 and 65535, or "
                 f"leave it unset (the job picks one from its id)")
    asked = int(asked)
    for candidate in range(asked, min(asked + 100, 65536)):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", candidate))
            except OSError:
                continue
        if candidate != asked:
            print(f"port {asked} is in use on {socket.gethostname()}: using {candidate}", file=sys.stderr)
        return candidate
    sys.exit(f"error: ports {asked}-{candidate} are all in use on {socket.gethostname()}: "
             f"set MASTER_PORT to a free one")


def stop(pid):
    try:
        root = psutil.Process(int(pid))
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass


def training(output_dir):
    """Whether a rank writing into output_dir still runs here: the launcher may be gone already
    (deepspeed's dies at once on SIGTERM) while its ranks still write their metrics."""
    for process in psutil.process_iter():
        try:
            args = process.cmdline()
            if is_rank(process) and any(a == "--output_dir" and b == output_dir for a, b in zip(args, args[1:])):
                return
        except psutil.Error:
            continue
    sys.exit(1)


def checkpoint(output_dir):
    """Its step and about how long writing it took: from its first file to trainer_state.json."""
    folder = newest_checkpoint(output_dir)
    if folder is None:
        return "none"
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()]
    return f"{checkpoint_step(folder)} {max(times) - min(times):.0f}"


def resumes(output_dir):
    """What the next attempt of a requeued job starts from."""
    folder = newest_checkpoint(output_dir)
    if folder is None:
        return f"{output_dir} holds no complete checkpoint: the next attempt starts afresh"
    return f"the next attempt resumes from {folder} (step {checkpoint_step(folder)})"


def this_attempts(output_dir, started):
    """run_metrics.json of the attempt that started at `started` (epoch seconds), or None."""
    metrics = Path(output_dir) / METRICS_FILE
    return read_json(metrics) if metrics.is_file() and metrics.stat().st_mtime >= float(started) else None


def summary(log, offset, started, output_dir):
    """train.py's summary lines again (from run_metrics.json), where other lines came after them
    in this attempt's log (the launchers' "exits successfully", a progress bar cut short): a
    job's last lines are its summary."""
    metrics = this_attempts(output_dir, started)
    if not isinstance(metrics, dict) or "time_seconds" not in metrics:
        return None
    lines = summary_lines(metrics, Path(output_dir) / METRICS_FILE)
    logged = [line.strip() for line in attempt_lines(log, offset, split_progress=True) if line.strip()]
    return None if logged[-len(lines):] == lines else "\n".join(lines)


def attempt_lines(log, offset, split_progress=False):
    """This attempt's lines of the job's log (from byte `offset`); a progress bar's redrawn
    lines (carriage returns) split apart if asked."""
    with open(log, "rb") as f:
        f.seek(int(offset))
        text = f.read().decode(errors="replace")
    return (text.replace("\r", "\n") if split_progress else text).splitlines()


def lost(output_dir):
    """The steps the previous attempt made after its newest checkpoint (run_metrics.json says
    how far it got), for a requeued attempt's log."""
    reached = (read_json(Path(output_dir) / METRICS_FILE) or {}).get("global_step")
    folder = newest_checkpoint(output_dir)
    saved = checkpoint_step(folder) if folder else 0
    if reached is None:
        return "" if folder else "no checkpoint and no run_metrics.json: training starts afresh"
    if reached <= saved:
        return ""
    where = f"resuming from checkpoint-{saved}" if folder else "no checkpoint: training starts afresh"
    return f"{reached - saved} step(s) of the previous attempt are lost (it reached step {reached}): {where}"


def reason(log, offset, started, output_dir, status, memory_csvs=""):
    """The failure's reason, as the job's last line: train.py's own `error: ...` line (the
    launchers print theirs after it) since `offset` of the log, or the line that names the
    cause where that error is about building an op or is a wall of text; else the error in
    run_metrics.json if this attempt (`started`, epoch seconds) wrote it; else a node's task
    that was killed, as srun says; else the signal that killed a training process (SIGKILL:
    with the host memory its ranks had, from the job's host memory logs `memory_csvs`)."""
    lines = attempt_lines(log, offset)
    errors = [line for line in lines if line.startswith("error: ")]
    causes = [line.strip() for line in lines if CAUSES.search(line)]
    if causes and (not errors or len(errors[-1]) > 300 or "extension" in errors[-1]):
        built = re.search(r"Error building extension '(\w+)'", "\n".join(lines))
        what = f"building DeepSpeed's op {built[1]} failed: " if built else ""
        return f"error: {what}{causes[-1][-300:]}"
    if errors:
        return errors[-1]
    error = (this_attempts(output_dir, started) or {}).get("error")
    if error:
        return f"error: {error}"
    killed = [m for m in map(KILLED.match, lines) if m]
    if killed:
        return f"error: the task on {killed[-1][1]} was killed ({killed[-1][0]})"
    signalled = [-int(m[1]) for m in map(LAUNCHER_EXIT.search, lines) if m and int(m[1]) < 0]
    number = signalled[-1] if signalled else int(status) - 128 if int(status) > 128 else None
    if number in signal.valid_signals():
        return f"error: {killed_by(number, memory_csvs, started)}"
    missing = [m[1] for m in map(MISSING_MODULE.search, lines) if m]
    if missing or str(status) == "127":
        python = next((line[len("python: "):] for line in lines if line.startswith("python: ")), "python")
        what = f"no module {missing[-1]}" if missing else "a command it runs is missing (exit status 127)"
        return (f"error: the job's Python environment ({python}) has {what}: activate the one the "
                f"README's setup made (make setup; source .venv/bin/activate) or install into yours: "
                f"pip install -r requirements.txt && pip install -e .")
    return f"error: train.py ended with exit status {status} without a reason: see the lines above"


def killed_by(number, memory_csvs, started):
    """A training process killed by signal `number`; for SIGKILL (what the kernel's out-of-memory
    killer sends) the peak of its ranks' host memory in this attempt against the node's."""
    said = f"a training process was killed by {signal.Signals(number).name} (signal {number})"
    if number != signal.SIGKILL:
        return f"{said}: see the lines above"
    since = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(float(started)))
    peaks = {}
    for csv in sorted(glob.glob(memory_csvs)) if memory_csvs else []:
        rows = [line.split(",") for line in Path(csv).read_text().splitlines()[1:]]
        values = [float(mib) for when, mib in rows if when >= since and mib.replace(".", "").isdigit()]
        if values:
            peaks[Path(csv).name] = max(values)
    node = psutil.virtual_memory().total / 2**20
    asked = os.environ.get("SLURM_MEM_PER_NODE")
    limit = f" and the job's --mem {int(asked):,} MiB" if asked and asked.isdigit() else ""
    if not peaks:
        return (f"{said}, as the kernel does when a node runs out of memory (the node has "
                f"{node:,.0f} MiB{limit}; its ranks' host memory was not logged): raise #SBATCH "
                f"--mem, or see what the run needs with python tools/plan.py MODEL")
    name, peak = max(peaks.items(), key=lambda kv: kv[1])
    return (f"{said}, as the kernel does when a node runs out of memory: its ranks' host memory "
            f"peaked at {peak:,.0f} MiB ({name}), of the node's {node:,.0f} MiB{limit}: raise "
            f"#SBATCH --mem, or see what the run needs with python tools/plan.py MODEL")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    answer = {"path": path, "names": names, "port": port, "stop": stop, "training": training, "checkpoint": checkpoint,
              "resumes": resumes, "lost": lost, "summary": summary, "reason": reason}[command](*args)
    if answer:
        print(answer)
