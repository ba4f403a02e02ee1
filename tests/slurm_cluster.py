"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd from Debian's
``slurm-wlm`` and ``munge`` packages, configured in a temporary folder and stopped afterwards.

Needs root (the daemons run as root here) and the packages, which ``make test`` installs
when it runs as root on Debian; without them the tests that need the cluster are skipped
with the reason. Client commands find the cluster through ``SLURM_CONF``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


def unavailable_reason() -> str | None:
    missing = [d for d in DAEMONS if not shutil.which(d) and not Path("/usr/sbin", d).exists()]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "starting a test Slurm cluster needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _ensure_munge(folder: Path) -> None:
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
    subprocess.run([_sbin("munged"), "--force"], check=True, capture_output=True)
    for _ in range(50):
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("munged did not start")


def _cmdlines() -> dict[int, str]:
    """pid -> command line, from /proc (no procps needed)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
    return out


def _pids(name: str) -> set[int]:
    """Processes whose command line starts with ``name`` (slurmstepd names itself
    'slurmstepd: [job.step]')."""
    return {pid for pid, cmd in _cmdlines().items() if cmd.split(" ")[0].split("/")[-1].startswith(name)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


class SlurmCluster:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.folder / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}

    def write_conf(self) -> None:
        f = self.folder
        for d in ("state", "spool"):
            (f / d).mkdir(parents=True, exist_ok=True)
        cpus = os.cpu_count() or 2
        mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        self.conf.write_text(f"""\
ClusterName=harnesstest
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'slurmctld.log'}
SlurmdLogFile={f / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=1
SlurmdParameters=config_overrides
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> "SlurmCluster":
        self.write_conf()
        _ensure_munge(self.folder)
        env = {**os.environ, **self.env}
        self._steps_before = _pids("slurmstepd")
        subprocess.run([_sbin("slurmctld"), "-c", "-f", str(self.conf)], check=True, env=env)
        subprocess.run([_sbin("slurmd"), "-f", str(self.conf)], check=True, env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
                # The daemons of this cluster (their command lines name its config file).
                self._daemon_pids = [pid for pid, cmd in _cmdlines().items()
                                     if str(self.conf) in cmd and pid != os.getpid()]
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the test Slurm node did not come up; see {self.folder}/slurmctld.log and slurmd.log")

    def stop(self) -> None:
        env = {**os.environ, **self.env}
        subprocess.run(["scancel", "--user", "root"], capture_output=True, env=env)
        # Let job steps report their end to slurmctld first: a step whose controller is gone
        # retries that call forever and keeps slurmd alive.
        deadline = time.time() + 30
        while time.time() < deadline and self.run("squeue", "-h").strip():
            time.sleep(0.5)
        new_steps = _pids("slurmstepd") - self._steps_before
        for pid in self._daemon_pids:
            _kill(pid, 15)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in self._daemon_pids):
            time.sleep(0.2)
        for pid in [*self._daemon_pids, *new_steps]:
            _kill(pid, 9)

    def run(self, *cmd: str) -> str:
        out = subprocess.run(list(cmd), capture_output=True, text=True, env={**os.environ, **self.env})
        return out.stdout
