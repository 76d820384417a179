"""Every second, the host memory of a job's training ranks, as CSV rows `timestamp,rss_mib`.

    python -m workshop.host_memory PID CSV

The ranks are the `python ... train.py` processes below PID (the launcher the job started),
each counted once: not the deepspeed launcher, not torch.compile's workers, not ninja or the
compiler building DeepSpeed's ops, not processes a rank forks. It stops when PID has ended.
"""
import sys
import time
from pathlib import Path

import psutil


def is_rank(process):
    """A `python [options] [path/]train.py ...` process."""
    args = process.cmdline()
    if not args or not Path(args[0]).name.startswith("python"):
        return False
    script = next((a for a in args[1:] if not a.startswith("-")), "")
    return Path(script).name == "train.py"


def ranks_rss_mib(root):
    ranks = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            if is_rank(process):
                ranks[process.pid] = process
        except psutil.Error:  # gone meanwhile
            continue
    total = 0
    for pid, process in ranks.items():
        try:
            if process.ppid() not in ranks:  # a rank's forks share its memory
                total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def main(pid, csv):
    root = psutil.Process(int(pid))
    path = Path(csv)
    with path.open("a", buffering=1) as out:
        if out.tell() == 0:  # a requeued job adds to the file it started
            out.write("timestamp,rss_mib\n")
        while root.is_running() and root.status() != psutil.STATUS_ZOMBIE:
            out.write(f"{time.strftime('%Y/%m/%d %H:%M:%S')},{ranks_rss_mib(root):.0f}\n")
            time.sleep(1)


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except psutil.NoSuchProcess:  # the training ended
        pass
