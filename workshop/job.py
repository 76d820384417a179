"""What the .slurm jobs (workshop/job.sh) ask Python, one line each, without torch:

    python -m workshop.job port ASKED            # a free rendezvous port, from ASKED on
    python -m workshop.job stop PID              # SIGTERM to PID and all its descendants
    python -m workshop.job training OUTPUT_DIR   # exit 0 while a rank of that run still runs here
    python -m workshop.job checkpoint OUTPUT_DIR # "STEP SECONDS" of the newest checkpoint
    python -m workshop.job lost OUTPUT_DIR       # the steps a requeued attempt lost, if any
    python -m workshop.job reason LOG OFFSET STARTED OUTPUT_DIR STATUS   # why the training failed
"""
import re
import signal
import socket
import sys
from pathlib import Path

import psutil

from workshop.host_memory import is_rank
from workshop.metrics import METRICS_FILE, newest_checkpoint, read_json

# Lines that name what a failure came down to (a full disk while compiling DeepSpeed's ops):
# clearer than the error above them, which may be a compiler command of hundreds of characters.
CAUSES = re.compile(r"No space left on device|Disk quota exceeded|Read-only file system|"
                    r"Cannot allocate memory")

# srun's line for a node's task killed from outside (by SLURM, the kernel, an operator)
MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
KILLED = re.compile(r"srun: error: (\S+): tasks? [\d,-]+: Killed$")


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
    return f"{folder.name.split('-')[1]} {max(times) - min(times):.0f}"


def lost(output_dir):
    """The steps the previous attempt made after its newest checkpoint (run_metrics.json says
    how far it got), for a requeued attempt's log."""
    reached = (read_json(Path(output_dir) / METRICS_FILE) or {}).get("global_step")
    folder = newest_checkpoint(output_dir)
    saved = int(folder.name.split("-")[1]) if folder else 0
    if reached is None:
        return "" if folder else "no checkpoint and no run_metrics.json: training starts afresh"
    if reached <= saved:
        return ""
    where = f"resuming from checkpoint-{saved}" if folder else "no checkpoint: training starts afresh"
    return f"{reached - saved} step(s) of the previous attempt are lost (it reached step {reached}): {where}"


def reason(log, offset, started, output_dir, status):
    """The failure's reason, as the job's last line: train.py's own `error: ...` line (the
    launchers print theirs after it) since `offset` of the log, or the line that names the
    cause where that error is about building an op or is a wall of text; else the error in
    run_metrics.json if this attempt (`started`, epoch seconds) wrote it; else a node's task
    that was killed, as srun says."""
    with open(log, "rb") as f:
        f.seek(int(offset))
        lines = f.read().decode(errors="replace").splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    causes = [line.strip() for line in lines if CAUSES.search(line)]
    if causes and (not errors or len(errors[-1]) > 300 or "extension" in errors[-1]):
        built = re.search(r"Error building extension '(\w+)'", "\n".join(lines))
        what = f"building DeepSpeed's op {built[1]} failed: " if built else ""
        return f"error: {what}{causes[-1][-300:]}"
    if errors:
        return errors[-1]
    metrics = Path(output_dir) / METRICS_FILE
    error = (read_json(metrics) or {}).get("error") if metrics.is_file() and \
        metrics.stat().st_mtime >= float(started) else None
    if error:
        return f"error: {error}"
    killed = [m for m in map(KILLED.match, lines) if m]
    if killed:
        return f"error: the task on {killed[-1][1]} was killed ({killed[-1][0]})"
    missing = [m[1] for m in map(MISSING_MODULE.search, lines) if m]
    if missing or str(status) == "127":
        python = next((line[len("python: "):] for line in lines if line.startswith("python: ")), "python")
        what = f"no module {missing[-1]}" if missing else "a command it runs is missing (exit status 127)"
        return (f"error: the job's Python environment ({python}) has {what}: activate the one the "
                f"README's setup made (make setup; source .venv/bin/activate) or install into yours: "
                f"pip install -r requirements.txt && pip install -e .")
    return f"error: train.py ended with exit status {status} without a reason: see the lines above"


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    answer = {"port": port, "stop": stop, "training": training, "checkpoint": checkpoint, "lost": lost,
              "reason": reason}[command](*args)
    if answer:
        print(answer)
