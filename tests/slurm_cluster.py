"""Pytest helpers: a real local SLURM cluster (tools/slurm-local) and job submission to it.

Not a test module. Typical use in a test file::

    import slurm_cluster as sc

    LAB = sc.Lab("slurm-local", ctl_port=16817)  # another file: another name and ports

    @pytest.fixture
    def slurm1(request):
        return LAB.up("1", request)     # or "2": two nodes n1, n2 ("2ns": in network namespaces)

    @pytest.mark.slurm
    def test_job(slurm1, tmp_path):
        job = slurm1.submit("baseline.slurm", cwd=stage_dir, env_overrides={"X": "1"})
        assert slurm1.wait(job, timeout=600) == ("COMPLETED", "0:0")

A cluster stays up across tests (switching mode restarts it) and is taken down by down.sh at
the end of the pytest session, unless it was already up, in that mode, before the session.
Clusters of other names and ports run side by side (each test file that submits jobs has its
own, so that pytest's workers can run those files at once). No accounting database: job
states come from ``scontrol -o show job`` (finished jobs stay listed for an hour,
MinJobAge=3600).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "slurm-local"
PACKAGES_MISSING_RC = 3  # up.sh: not root, or slurm/munge missing and not installable

# states after which a job will not change any more (anything else: keep polling)
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
          "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


@dataclass(eq=False)
class Lab:
    """One cluster of the harness: its name (up.sh's SLAB_NAME: its folder /tmp/<name>, its
    network namespaces) and its ports (slurmctld on ctl_port; slurmd on ctl_port + 1, in mode
    2 n1 and n2 on ctl_port + 2 and + 3)."""
    name: str
    ctl_port: int
    mode: str | None = None    # what up.sh brought up last
    started_here: bool = False

    @property
    def dir(self) -> Path:
        return Path(f"/tmp/{self.name}")

    @property
    def conf(self) -> Path:
        return self.dir / "etc" / "slurm.conf"

    def env(self, extra: dict | None = None) -> dict:
        """os.environ for slurm client commands: this cluster's SLURM_CONF, and no
        SBATCH_*/SLURM_* variables inherited from the caller (they would silently override a job
        script's #SBATCH lines, or make sbatch think it runs inside another job); in mode "2ns"
        up.sh's wrappers first on PATH (they run the commands in n1's network namespace);
        `extra` is applied last."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SBATCH_", "SLURM_", "SALLOC_", "SRUN_", "SLAB_"))}
        env["SLURM_CONF"] = str(self.conf)
        wrappers = self.dir / "bin"
        if wrappers.is_dir() and any(wrappers.iterdir()) and \
                str(wrappers) not in env.get("PATH", "").split(os.pathsep):
            env["PATH"] = f"{wrappers}{os.pathsep}{env.get('PATH', '')}"
        env.update({k: str(v) for k, v in (extra or {}).items()})
        return env

    def tool(self, script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """tools/slurm-local/<script> for this cluster."""
        env = self.env({"SLAB_NAME": self.name, "SLAB_DIR": self.dir,
                        "SLAB_CTL_PORT": self.ctl_port, "SLAB_SLURMD_PORT": self.ctl_port + 1})
        return subprocess.run(["bash", str(TOOL / script), *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def up(self, mode: str, request: pytest.FixtureRequest | None = None) -> Lab:
        """Make sure this cluster runs in `mode` ("1", "2" or "2ns"), and return it.

        Skips the calling test when not root, when slurm/munge are missing and cannot be
        installed (no apt-get, no network), or ("2ns") when network namespaces cannot be made.
        Pass the fixture's `request` so the cluster is taken down at the end of the pytest
        session (otherwise: at interpreter exit).
        """
        mode = str(mode)
        if mode not in ("1", "2", "2ns"):
            raise ValueError(f"mode must be '1', '2' or '2ns', not {mode!r}")
        if os.name != "posix" or not hasattr(os, "geteuid") or os.geteuid() != 0:
            pytest.skip("local SLURM cluster needs root (slurmctld/slurmd/munged run as root); "
                        "run pytest as root or deselect with -m 'not slurm'")
        have = all(shutil.which(c) for c in ("slurmctld", "slurmd", "sbatch", "munged"))
        if not have and not shutil.which("apt-get"):
            pytest.skip("slurm/munge not installed and no apt-get to install them "
                        "(Debian packages slurmctld slurmd slurm-client munge)")
        _register_teardown(self, request)
        t0 = time.monotonic()
        r = self.tool("up.sh", mode)
        if r.returncode == PACKAGES_MISSING_RC:
            last = (r.stdout.strip().splitlines() or ["up.sh exited 3"])[-1]
            pytest.skip(f"cannot bring up local SLURM: {last}")
        if r.returncode != 0:
            pytest.fail(f"tools/slurm-local/up.sh {mode} ({self.name}) failed (rc={r.returncode}) "
                        f"after {time.monotonic() - t0:.1f} s:\n{r.stdout[-6000:]}", pytrace=False)
        if "cluster already up" not in r.stdout:
            self.started_here = True
        self.mode = mode
        return self

    def down(self) -> None:
        """Stop this cluster (tools/slurm-local/down.sh); a no-op when it is not up."""
        r = self.tool("down.sh", timeout=120)
        self.started_here, self.mode = False, None
        if r.returncode != 0:
            raise RuntimeError(f"down.sh ({self.name}) failed (rc={r.returncode}):\n{r.stdout}")

    def set_link(self, node: str, up: bool) -> None:
        """Mode "2ns": connect or cut `node` ("n1", "n2") from the other one (its veth)."""
        assert self.mode == "2ns", "only mode 2ns has a network to cut"
        subprocess.run(["ip", "-n", f"slab-{self.name}-{node}", "link", "set", f"slab-v{node[1:]}",
                        "up" if up else "down"], check=True, capture_output=True, timeout=30)

    def submit(self, script_path, cwd, env_overrides: dict | None = None,
               sbatch_args: list | None = None, script_args: list | None = None) -> int:
        """sbatch `script_path` from `cwd` (creates cwd/log first: jobs write log/%x-%j.out, and
        slurm fails a job whose --output folder is missing). The script's #SBATCH lines apply as
        written; `sbatch_args` (e.g. ["--time=5", "--gres=none"]) override them; `script_args`
        go after the script's name (the script's "$@"). The job sees the current environment
        plus `env_overrides` (sbatch's default --export=ALL). Returns the job id.
        """
        cwd = Path(cwd)
        (cwd / "log").mkdir(parents=True, exist_ok=True)
        cmd = ["sbatch", "--parsable", *[str(a) for a in (sbatch_args or [])], str(script_path),
               *[str(a) for a in (script_args or [])]]
        r = subprocess.run(cmd, cwd=cwd, env=self.env(env_overrides), capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} (in {cwd}) failed rc={r.returncode}: "
                               f"{r.stderr.strip()}")
        return int(r.stdout.strip().split(";")[0])  # --parsable: "jobid[;cluster]"

    def scontrol(self, *args: str, check: bool = True) -> None:
        """scontrol ARGS... on this cluster (update, requeue, release)."""
        r = subprocess.run(["scontrol", *args], env=self.env(), capture_output=True, text=True,
                           timeout=30)
        if check and r.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)}: {r.stderr.strip()}")

    def job_info(self, job_id: int) -> dict:
        """`scontrol -o show job ID` as a dict (JobState, ExitCode, NodeList, StdOut, ...)."""
        r = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], env=self.env(),
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"scontrol show job {job_id} failed: {r.stderr.strip()}")
        # one line of Key=Value fields; values may contain spaces only in a few fields we ignore
        return dict(m.groups() for m in re.finditer(r"(?:^|\s)([A-Za-z:/]+)=(\S*)", r.stdout))

    def wait(self, job_id: int, timeout: float = 600, poll: float = 0.3) -> tuple[str, str]:
        """Poll until the job has finished; return (JobState, ExitCode), e.g. ("COMPLETED",
        "0:0") or ("FAILED", "3:0"). On timeout the job is cancelled and TimeoutError raised."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job_info(job_id)
            state = info.get("JobState", "")
            if state and state not in ACTIVE:
                return state, info.get("ExitCode", "")
            if time.monotonic() > deadline:
                self.cancel(job_id)
                raise TimeoutError(f"job {job_id} still {state} after {timeout} s (cancelled)")
            time.sleep(poll)

    def cancel(self, job_id: int) -> None:
        """scancel the job (no error if it has already finished)."""
        subprocess.run(["scancel", str(job_id)], env=self.env(), capture_output=True, timeout=30)

    def signal(self, job_id: int, name: str) -> None:
        """Send signal `name` (USR1, TERM) to the job's batch shell alone, as SLURM's
        --signal=B:... does before the time limit and preemption with a grace time does."""
        subprocess.run(["scancel", "--batch", f"--signal={name}", str(job_id)], env=self.env(),
                       check=True, capture_output=True, timeout=30)


_finalized: set[tuple[int, str]] = set()  # (session, lab) pairs with a teardown registered


def _register_teardown(lab: Lab, request) -> None:
    def down_if_started_here():
        if lab.started_here:
            lab.down()
    key = (id(request.session) if request is not None else -1, lab.name)
    if key in _finalized:
        return
    _finalized.add(key)
    if request is None:
        import atexit
        atexit.register(down_if_started_here)
    else:
        request.session.addfinalizer(down_if_started_here)
