"""A throwaway single-node SLURM cluster on 127.0.0.1, for tests/test_slurm.py.

SLURM 22.05 from Debian: munged, MariaDB, slurmdbd, slurmctld and slurmd, each started in its own
session in the foreground of a process that this module started, with its state, sockets, logs and
PID files in one private folder; stopped by those PIDs (and the process groups they lead) only.
Nothing of the machine's own services is used or touched: munge runs on a private socket with a
private key, MariaDB on a private port and data folder, and the SLURM daemons on private ports.

One cluster per machine at a time: start() takes a lock (LOCK_FILE) that stop() releases, and
notes its daemons in STATE_FILE, so that the next start() stops those of a run whose test process
died before it could (each only while it is still that program in that run's private folder).

The one thing outside that folder is /etc/slurm/{slurm,gres,slurmdbd}.conf: the job step that the
Snakemake SLURM executor runs inside each job (srun) drops SLURM_CONF, so the configuration has to
be where SLURM looks by default. Those files carry MARKER; an existing slurm.conf without it (a
real SLURM installation) makes the tests skip, and stop() removes only files that carry it.

No systemd and no cgroups: ProctrackType=proctrack/pgid, TaskPlugin=task/none (slurmd still
wants a mounted cgroup file system to be present). SLURM ends a job's processes by their process
groups: with proctrack/linuxproc it followed parent links, and a process whose parent had died
(re-parented to init) escaped it, e.g. the `snakemake --executor slurm-jobstep` of a cancelled
job, which waits on SIGTERM for its job step and then lived on. Fake GPUs: GresTypes=gpu, node
Gres=gpu:<GPU_MODEL>:N, gres.conf AutoDetect=off with File= character devices (clones of
/dev/null; SLURM rejects a plain file), so a job that asks for a GPU gets CUDA_VISIBLE_DEVICES set
to its device's index; the node has the feature NODE_FEATURE. The partition `gresonly` (the same
node) stands for a site that takes GPU requests only with --gres: a job_submit.lua refuses jobs
there that ask for GPUs with --gpus. A TaskProlog appends every task's SLURM_JOB_ID, SLURM_STEP_ID
and CUDA_VISIBLE_DEVICES to task_env.log in the cluster's folder (see task_env()), so a test can
see what each job was given.

Every process of the cluster carries the environment variable PROCESS_MARK=<its folder>: the
daemons get it from start(), every task of every job from the TaskProlog, and a test gives it to
the processes it starts (env()). stop() ends whatever still carries it, and processes() lists it.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MARKER = "# Written by mzsr tests/slurm_cluster.py for a throwaway test cluster; removed when the test ends."
ETC = Path("/etc/slurm")
CONF_FILES = ("slurm.conf", "gres.conf", "slurmdbd.conf", "job_submit.lua")
GPU_MODEL = "testgpu"  # the GRES type of the fake GPUs (--gres=gpu:testgpu:1, --gpus=testgpu:1)
NODE_FEATURE = "fakegpu"  # a node feature, for sbatch -C
GRES_ONLY_PARTITION = "gresonly"
PROCESS_MARK = "MZSR_SLURM_TEST_CLUSTER"
CLUSTER = "mzsrtest"
# Lifetime of job credentials, and so how long a requeued job waits before it starts again
# (SLURM's default: 120 s; starting it sooner fails with "Job credential revoked").
CRED_EXPIRE = 10
ACCOUNT = "root"  # the account every association tree starts with; root's default account
# Programs the cluster runs, and the Debian package of each.
PROGRAMS = {
    "munged": "munge",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "slurmdbd": "slurmdbd",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "sacct": "slurm-client",
    "sacctmgr": "slurm-client",
    "scontrol": "slurm-client",
    "sinfo": "slurm-client",
    "squeue": "slurm-client",
    "scancel": "slurm-client",
}
# One test cluster per machine at a time (they share /etc/slurm): a lock held while one runs, and
# a note of its daemons, so that a run whose test process died without stopping them is cleaned up.
LOCK_FILE = Path(tempfile.gettempdir()) / "mzsr-slurm-test.lock"
STATE_FILE = Path(tempfile.gettempdir()) / "mzsr-slurm-test.json"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


class ClusterUnavailable(Exception):
    """This machine cannot host the test cluster (the message says why); the tests skip."""


def which(program: str) -> str | None:
    return shutil.which(program, path=SEARCH_PATH)


def missing_packages() -> list[str]:
    return sorted({package for program, package in PROGRAMS.items() if which(program) is None})


def ensure_installed(timeout: float = 600) -> None:
    """Install the Debian packages the cluster needs, if missing (as root, with apt-get).

    Raises ClusterUnavailable where that cannot be done (not root, no apt-get); an apt-get that
    runs and fails is an error (RuntimeError), not a reason to skip.
    """
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"SLURM test cluster: needs root to install the Debian packages {' '.join(missing)}")
    if which("apt-get") is None:
        raise ClusterUnavailable(f"SLURM test cluster: no apt-get to install {' '.join(missing)} (Debian/Ubuntu only)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120", *missing]
    deadline = time.monotonic() + timeout
    proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:  # package lists absent or stale on a fresh machine: update once, retry
        subprocess.run(
            ["apt-get", "update", "-q"],
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
        )
        proc = subprocess.run(
            install, env=env, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic())
        )
    if proc.returncode != 0 or missing_packages():
        raise RuntimeError(f"apt-get could not install {' '.join(missing)}:\n{(proc.stdout + proc.stderr)[-3000:]}")


def check_machine() -> None:
    """Raise ClusterUnavailable when this machine cannot host the cluster."""
    if os.geteuid() != 0:
        raise ClusterUnavailable("SLURM test cluster: needs root (daemons run as root, config goes to /etc/slurm)")
    if not Path("/sys/fs/cgroup").is_dir() or not os.path.ismount("/sys/fs/cgroup"):
        raise ClusterUnavailable("SLURM test cluster: slurmd needs a mounted cgroup file system at /sys/fs/cgroup")
    existing = ETC / "slurm.conf"
    if existing.exists() and MARKER not in existing.read_text(errors="replace"):
        raise ClusterUnavailable(
            f"SLURM test cluster: {existing} belongs to a real SLURM installation; not touching it"
        )


def stop_leftovers() -> None:
    """Stop the daemons of an earlier test cluster that were never stopped (its test process died).

    Only the processes noted in STATE_FILE, and only while each is still the same program running
    in that cluster's private folder (so a PID that was reused by now is left alone)."""
    try:
        state = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return
    root = state.get("root", "")
    for daemon in reversed(state.get("daemons", [])):
        pid = int(daemon["pid"])
        try:
            exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if root and exe == os.path.realpath(daemon["exe"]) and (cwd == root or cwd.startswith(root + "/")):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
    if root:
        end_processes(marked_processes(root))
    STATE_FILE.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (which only waits for its parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def marked_processes(root: str | Path) -> dict[int, str]:
    """{pid: command line} of the live processes that carry PROCESS_MARK=root in their environment,
    except this process and its ancestors."""
    mark = f"{PROCESS_MARK}={root}".encode()
    own = set()
    pid = os.getpid()
    while pid > 1:
        own.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0") and _alive(int(entry.name)):
                found[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                )
        except OSError:
            continue
    return found


def end_processes(processes: dict[int, str], grace: float = 5.0) -> dict[int, str]:
    """SIGTERM, then after `grace` seconds SIGKILL, each of these processes; returns those still
    alive after that (none, unless one is stuck in the kernel)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes:
            if _alive(pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(pid) for pid in processes):
            time.sleep(0.1)
    return {pid: cmd for pid, cmd in processes.items() if _alive(pid)}


def _session(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class SlurmCluster:
    """start() brings the cluster up (about 5 s), stop() takes it down; see the module docstring."""

    def __init__(self, root: Path, gpus: int = 2, cpus: int | None = None):
        self.root = Path(root)
        self.gpus = gpus
        self.host = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self._lock_fd: int | None = None
        self.ports = {name: free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}
        # More CPUs than the machine has are allowed (slurmd's config_overrides): short jobs mostly wait.
        self.cpus = cpus or os.cpu_count() or 1
        for sub in ("munge", "mariadb", "ctld", "spool", "run", "log", "dev"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            (self.root / sub).chmod(0o700)
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.gpu_devices = [self.root / "dev" / f"nvidia{i}" for i in range(gpus)]
        self.task_prolog = self.root / "task_prolog.sh"
        self.task_env_log = self.root / "task_env.log"
        self.stragglers: dict[int, str] = {}  # what stop() had to end: processes that outlived their job

    # ------------------------------------------------------------------------------ files

    def _write_configs(self) -> None:
        r = self.root
        key = r / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        for device in self.gpu_devices:
            if not device.exists():
                os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
        self.task_prolog.write_text(
            "#!/bin/sh\n"
            "# Runs before every task of every job, in the task's environment.\n"
            'echo "SLURM_JOB_ID=$SLURM_JOB_ID SLURM_STEP_ID=${SLURM_STEP_ID:-batch}'
            f' CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-unset}}" >> {self.task_env_log}\n'
            "# A line 'export NAME=value' on stdout sets NAME in the task: every job process carries the mark.\n"
            f'echo "export {PROCESS_MARK}={self.root}"\n'
        )
        self.task_prolog.chmod(0o755)
        slurm_conf = f"""{MARKER}
ClusterName={CLUSTER}
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={self.ports["slurmctld"]}
SlurmdPort={self.ports["slurmd"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket},cred_expire={CRED_EXPIRE}
CredType=cred/munge
StateSaveLocation={r / "ctld"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "run" / "slurmctld.pid"}
SlurmdPidFile={r / "run" / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/pgid
TaskPlugin=task/none
TaskProlog={self.task_prolog}
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.ports["slurmdbd"]}
AccountingStoragePass={self.munge_socket}
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobSubmitPlugins=lua
GresTypes=gpu
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
DefMemPerCPU=1000
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=8000 Gres=gpu:{GPU_MODEL}:{self.gpus} Features={NODE_FEATURE} State=UNKNOWN
PartitionName=cpu Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.host} MaxTime=INFINITE State=UP
PartitionName={GRES_ONLY_PARTITION} Nodes={self.host} MaxTime=INFINITE State=UP
"""
        gres_conf = f"{MARKER}\nAutoDetect=off\n" + "".join(
            f"NodeName={self.host} Name=gpu Type={GPU_MODEL} File={device}\n" for device in self.gpu_devices
        )
        job_submit_lua = f"""-- {MARKER}
-- Partition {GRES_ONLY_PARTITION} stands for a site that takes GPU requests only with --gres.
function slurm_job_submit(job_desc, part_list, submit_uid)
    if job_desc.partition == "{GRES_ONLY_PARTITION}" and job_desc.tres_per_job ~= nil
            and string.find(job_desc.tres_per_job, "gpu") then
        slurm.log_user("partition {GRES_ONLY_PARTITION} takes GPU requests with --gres only, not --gpus")
        return slurm.ERROR
    end
    return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    return slurm.SUCCESS
end
"""
        slurmdbd_conf = f"""{MARKER}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost={self.host}
DbdAddr=127.0.0.1
DbdPort={self.ports["slurmdbd"]}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports["mariadb"]}
StorageUser=root
StorageLoc=slurm_acct_db
PidFile={r / "run" / "slurmdbd.pid"}
LogFile={r / "log" / "slurmdbd.log"}
DebugLevel=info
"""
        ETC.mkdir(parents=True, exist_ok=True)
        for name, text, mode in (
            ("slurm.conf", slurm_conf, 0o644),
            ("gres.conf", gres_conf, 0o644),
            ("slurmdbd.conf", slurmdbd_conf, 0o600),
            ("job_submit.lua", job_submit_lua, 0o644),
        ):
            path = ETC / name
            if path.exists() and MARKER not in path.read_text(errors="replace"):
                raise ClusterUnavailable(f"SLURM test cluster: {path} belongs to a real SLURM installation")
            path.write_text(text)
            path.chmod(mode)

    def _remove_configs(self) -> None:
        for name in CONF_FILES:
            path = ETC / name
            try:
                if MARKER in path.read_text(errors="replace"):
                    path.unlink()
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------------------ daemons

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.root,
            env=self.env(),
        )
        out.close()
        self.procs[name] = proc
        (self.root / "run" / f"{name}.popen.pid").write_text(f"{proc.pid}\n")
        STATE_FILE.write_text(
            json.dumps(
                {
                    "root": str(self.root),
                    "daemons": [{"name": n, "pid": p.pid, "exe": p.args[0]} for n, p in self.procs.items()],
                }
            )
        )
        return proc

    def _lock(self, timeout: float) -> None:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise ClusterUnavailable(f"SLURM test cluster: another one runs on this machine ({LOCK_FILE})")
                time.sleep(1)

    def _wait(self, what: str, ready, timeout: float = 30.0, daemon: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if daemon and self.procs[daemon].poll() is not None:
                raise RuntimeError(f"{daemon} exited with {self.procs[daemon].returncode} before {what}\n{self.logs()}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"SLURM test cluster: timed out waiting for {what}\n{self.logs()}")

    def logs(self, tail: int = 1500) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace")
            if text.strip():
                parts.append(f"--- {path.name}\n{text[-tail:]}")
        return "\n".join(parts)

    def start(self, lock_timeout: float = 300) -> None:
        check_machine()
        self._lock(lock_timeout)
        stop_leftovers()
        r = self.root
        self._write_configs()
        self._spawn(
            "munged",
            [
                which("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={r / 'munge' / 'munge.key'}",
                f"--pid-file={r / 'run' / 'munged.pid'}",
                f"--log-file={r / 'log' / 'munged.log'}",
                f"--seed-file={r / 'munge' / 'munged.seed'}",
            ],
        )
        self._wait("munged's socket", self.munge_socket.exists, daemon="munged")

        datadir = r / "mariadb" / "data"
        if not (datadir / "mysql").is_dir():
            proc = subprocess.run(
                [
                    which("mariadb-install-db"),
                    "--no-defaults",
                    "--user=root",
                    f"--datadir={datadir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"mariadb-install-db failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        self._spawn(
            "mariadbd",
            [
                which("mariadbd"),
                "--no-defaults",
                "--user=root",
                f"--datadir={datadir}",
                f"--socket={r / 'mariadb' / 'mysqld.sock'}",
                f"--port={self.ports['mariadb']}",
                "--bind-address=127.0.0.1",
                f"--pid-file={r / 'run' / 'mariadbd.pid'}",
                f"--log-error={r / 'log' / 'mariadbd.log'}",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
            ],
        )
        self._wait("MariaDB", lambda: port_open(self.ports["mariadb"]), daemon="mariadbd", timeout=60)

        self._spawn("slurmdbd", [which("slurmdbd"), "-D"])
        self._wait("slurmdbd", lambda: port_open(self.ports["slurmdbd"]), daemon="slurmdbd", timeout=60)
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-i"])
        self._wait("slurmctld", lambda: self.cmd("scontrol", "ping", check=False).returncode == 0, daemon="slurmctld")
        self._spawn("slurmd", [which("slurmd"), "-D", "-N", self.host])
        self._wait(
            "the node to be idle",
            lambda: set(self.cmd("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.split()) == {"idle"},
            daemon="slurmd",
        )  # one line per partition
        # slurmctld registers the cluster with slurmdbd; wait for its association tree (account root).
        self._wait(
            "the cluster's accounts in slurmdbd",
            lambda: (
                ACCOUNT
                in self.cmd(
                    "sacctmgr", "-n", "-P", "list", "associations", f"cluster={CLUSTER}", "format=account", check=False
                ).stdout.split()
            ),
        )

    def stop(self) -> None:
        """Cancel what runs, stop the daemons (newest first) by their PIDs, remove the config files."""
        try:
            if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
                jobs = self.cmd("squeue", "-h", "-o", "%A", check=False).stdout.split()
                if jobs:
                    self.cmd("scancel", *jobs, check=False)
                    deadline = time.monotonic() + 20
                    while (
                        time.monotonic() < deadline and self.cmd("squeue", "-h", "-o", "%A", check=False).stdout.split()
                    ):
                        time.sleep(0.5)
        finally:
            for name in reversed(list(self.procs)):
                self._terminate(self.procs[name])
            # what outlived its job or its daemon (slurmstepd and job processes run in sessions of
            # their own): end it, and note it for the tests
            left = marked_processes(self.root)
            self.stragglers.update(left)
            stuck = end_processes(left)
            if self._lock_fd is not None:
                self._remove_configs()
                STATE_FILE.unlink(missing_ok=True)
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None
            if stuck:
                raise RuntimeError(f"SLURM test cluster: processes that survived SIGKILL: {stuck}")

    @staticmethod
    def _terminate(proc: subprocess.Popen, timeout: float = 15.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        try:  # what the daemon started in its session (slurmstepd, job processes) goes with it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    # ------------------------------------------------------------------------------ processes

    def env(self, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        """`base` (default: this process's environment) with the cluster's process mark: give it to
        every process a test starts (sbatch --export=ALL passes it on to the jobs)."""
        return {**(os.environ if base is None else base), **extra, PROCESS_MARK: str(self.root)}

    def processes(self, jobs_only: bool = True) -> dict[int, str]:
        """{pid: command line} of the live processes of this cluster; with jobs_only, without the
        daemons (and their own children, e.g. slurmctld's slurmscriptd)."""
        found = marked_processes(self.root)
        if jobs_only:
            daemons = {p.pid for p in self.procs.values() if p.poll() is None}
            found = {pid: cmd for pid, cmd in found.items() if pid not in daemons and _session(pid) not in daemons}
        return found

    # ------------------------------------------------------------------------------ commands

    def cmd(self, program: str, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        proc = subprocess.run([which(program), *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def task_env(self) -> dict[str, dict[str, str]]:
        """{job id: {step id ("batch", "0", ...): CUDA_VISIBLE_DEVICES or "unset"}} of every task so far."""
        found: dict[str, dict[str, str]] = {}
        if self.task_env_log.exists():
            for line in self.task_env_log.read_text().splitlines():
                fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                if "SLURM_JOB_ID" in fields:
                    found.setdefault(fields["SLURM_JOB_ID"], {})[fields.get("SLURM_STEP_ID", "?")] = fields.get(
                        "CUDA_VISIBLE_DEVICES", "unset"
                    )
        return found

    def sacct(self, *fields: str, duplicates: bool = False) -> list[dict[str, str]]:
        """One dict per job (allocations only, no steps) of this cluster's accounting; with
        duplicates, one per run of a job (a requeued job has a record for each)."""
        out = self.cmd(
            "sacct",
            "-a",
            "-X",
            "-n",
            "-P",
            *(["-D"] if duplicates else []),
            f"--clusters={CLUSTER}",
            "--starttime=now-1days",
            f"--format={','.join(fields)}",
        ).stdout
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
