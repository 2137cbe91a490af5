"""A real single-node Slurm cluster for the tests of slurm/: munged, slurmctld and slurmd (Debian's
slurm-wlm and munge packages) started as root from a private configuration in a temporary folder.

Nothing is shared with a system installation: its own munge key and socket, non-default free ports,
state, spool, pid and log files in the folder, SLURM_CONF pointing at its slurm.conf. The daemons
are stopped by their pid files.

    cluster = SlurmCluster(folder).start()     # returns when sinfo shows the node idle
    subprocess.run(["sbatch", ...], env=cluster.env(os.environ))
    states = cluster.wait()                    # {"12": "COMPLETED", "13_0": "COMPLETED", ...}
    cluster.stop()
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "munge", "unmunge")


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here (None if it can)."""
    missing = [b for b in DAEMONS + CLIENTS if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return (f"Slurm is not installed (missing {', '.join(missing)}): "
                "apt-get install -y slurm-wlm munge (CI's .ci/run does)")
    if os.geteuid() != 0:
        return "the test cluster's slurmd must run as root"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(n: int) -> list[int]:
    """n distinct TCP ports that are free now (bound to port 0, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.pid_files = {"munged": self.root / "munge" / "munged.pid",
                          "slurmctld": self.root / "slurmctld.pid",
                          "slurmd": self.root / "slurmd.pid"}
        self.logs = {"munged": self.root / "munge" / "munged.log",
                     "slurmctld": self.root / "log" / "slurmctld.log",
                     "slurmd": self.root / "log" / "slurmd.log"}

    def env(self, base: dict | None = None) -> dict:
        """`base` (default os.environ) with SLURM_CONF pointing at this cluster."""
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    def _run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, check=check,
                              timeout=timeout)

    # Configuration ---------------------------------------------------------------------------

    def write_config(self) -> None:
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o755)   # munged wants its socket's folder reachable by everyone
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        ctld_port, d_port = _free_ports(2)
        mem_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        # Slurm drains a node that reports less memory than configured: claim a bit less than there is.
        self.conf.write_text(f"""\
ClusterName=untest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={self.pid_files['slurmctld']}
SlurmdPidFile={self.pid_files['slurmd']}
SlurmctldLogFile={self.logs['slurmctld']}
SlurmdLogFile={self.logs['slurmd']}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=3600
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={int(mem_mib * 0.8)} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    # Start and stop ----------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> "SlurmCluster":
        """Write the configuration, start the daemons, wait until the node is idle."""
        self.write_config()
        m = self.root / "munge"
        subprocess.run([_binary("munged"), "--force", f"--socket={self.munge_socket}",
                        f"--key-file={m / 'munge.key'}", f"--pid-file={self.pid_files['munged']}",
                        f"--log-file={self.logs['munged']}", f"--seed-file={m / 'munged.seed'}"],
                       check=True, capture_output=True, text=True, timeout=30)
        check = subprocess.run(f"munge -n -S {self.munge_socket} | unmunge -S {self.munge_socket}", shell=True,
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"munge does not work: {check.stderr}\n{_tail(self.logs['munged'])}")
        subprocess.run([_binary("slurmctld"), "-f", str(self.conf)], env=self.env(), check=True, timeout=30)
        subprocess.run([_binary("slurmd"), "-f", str(self.conf), "-N", self.node], env=self.env(), check=True,
                       timeout=30)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = self._run("sinfo", "-h", "-o", "%t", check=False)
            state = out.stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the node is not idle after {timeout:.0f} s (sinfo: {state!r})\n"
                           f"slurmctld.log:\n{_tail(self.logs['slurmctld'])}\nslurmd.log:\n{_tail(self.logs['slurmd'])}")

    def stop(self, timeout: float = 15) -> None:
        """Cancel what is left of the jobs, then stop slurmd, slurmctld and munged by their pid files."""
        if self.conf.exists():
            self._run("scancel", "--user", "root", check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            try:
                pid = int(self.pid_files[name].read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)

    # Jobs --------------------------------------------------------------------------------------

    def job_states(self) -> dict[str, str]:
        """{job id ('12' or array task '13_0'): state} of every job the controller remembers."""
        out = self._run("scontrol", "-o", "show", "job", check=False).stdout
        states = {}
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "JobId" not in fields:
                continue
            task = fields.get("ArrayTaskId")
            key = f"{fields['ArrayJobId']}_{task}" if task and fields.get("ArrayJobId") else fields["JobId"]
            states[key] = fields.get("JobState", "?")
        return states

    def wait(self, timeout: float = 600, poll: float = 1.0) -> dict[str, str]:
        """Wait until no job is pending or running; return job_states()."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                return self.job_states()
            time.sleep(poll)
        raise TimeoutError(f"jobs still queued after {timeout:.0f} s: {self._run('squeue', check=False).stdout}")
