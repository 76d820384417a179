"""train.py's processes forked from one that has imported its libraries already (not a test module).

On the 2-core machine a train.py process spends most of a tiny run importing torch, transformers,
datasets and DeepSpeed (about 5 s of 7). A test's runs here are each a fresh process as
`python train.py` makes it (its own folder, arguments, environment, signals, process group and
exit status; the stage's modules imported anew), forked from a server process that imported the
libraries once and did nothing else, the way a zygote starts applications. Several ranks are
forked at once with the environment DeepSpeed's launcher gives each rank (the jobs' SLURM tests
run the launcher itself).
"""
import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading

REPLY = "forked_runs:"  # the server's replies among what its imports print
SERVER = f"REPLY = {REPLY!r}\n" + r"""
import json, os, runpy, sys
import torch, transformers.trainer, datasets, deepspeed  # what every run imports first
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pids = []
    for env in request["envs"]:
        pid = os.fork()
        if pid == 0:  # the run: as `python train.py ARGS` in the stage's folder
            os.chdir(request["cwd"])
            os.environ.clear(); os.environ.update(env)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_APPEND), fd)
            sys.argv = ["train.py", *request["args"]]
            sys.path[0] = request["cwd"]
            runpy.run_path("train.py", run_name="__main__")
            sys.exit(0)  # the interpreter's own exit: atexit handlers, flushed streams
        pids.append(pid)
    print(REPLY, json.dumps(pids), flush=True)
    codes = []
    for pid in pids:
        status = os.waitpid(pid, 0)[1]
        codes.append(os.waitstatus_to_exitcode(status))
    print(REPLY, json.dumps(codes), flush=True)
"""

_server = None  # this process's (a pytest worker's), started with its environment at first use


def forking_server():
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        atexit.register(_server.kill)
    return _server


def _reply(server):
    for line in server.stdout:
        if line.startswith(REPLY):
            return json.loads(line.removeprefix(REPLY))
    raise RuntimeError(f"the forking server ended (exit status {server.wait()})")


def run(cmd, cwd, envs, timeout):
    """`cmd` (["python", "train.py", *args]) run in `cwd` as one process per environment in
    `envs`, at once; like subprocess.run(capture_output=True, text=True): the processes' output
    together, the first failing exit status (or 0)."""
    server = forking_server()
    with tempfile.TemporaryDirectory() as folder:
        stdout, stderr = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        for path in (stdout, stderr):
            open(path, "w").close()
        server.stdin.write(json.dumps(dict(cwd=str(cwd), envs=envs, args=[str(a) for a in cmd[2:]],
                                           stdout=stdout, stderr=stderr)) + "\n")
        server.stdin.flush()
        pids = _reply(server)
        timed_out = threading.Event()

        def end_them():
            timed_out.set()
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        timer = threading.Timer(timeout, end_them)
        timer.start()
        codes = _reply(server)
        timer.cancel()
        if timed_out.is_set():
            raise subprocess.TimeoutExpired(cmd, timeout)
        with open(stdout) as out, open(stderr) as err:
            return subprocess.CompletedProcess(cmd, next((c for c in codes if c), 0), out.read(), err.read())
