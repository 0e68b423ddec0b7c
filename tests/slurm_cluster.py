"""A private single-node SLURM cluster for the tests, booted under a temporary directory.

Everything the cluster needs lives under one root folder: configuration (slurm.conf,
gres.conf, slurmdbd.conf), a private munge key and socket, the controller's state, the node's
spool, logs, PID files and, with ``accounting=True``, a private MariaDB that slurmdbd stores job
records in (so ``sacct`` answers as on a production cluster). The node advertises fake GPUs:
``gres.conf`` names one character device per GPU (``mknod ... c 1 3``, the numbers of
``/dev/null``), which is enough for the scheduler to grant them; jobs see
``CUDA_VISIBLE_DEVICES`` but no CUDA device.

Every daemon runs in the foreground under ``timeout -s KILL <lifetime>``, so a test process
that dies without cleaning up leaves nothing running beyond that lifetime. ``stop()`` ends
only the daemons this object started: it reads each daemon's PID file and signals that PID
only when the process is the child of the wrapper this object spawned.

Client commands need ``env`` (it carries ``SLURM_CONF``); ``command()`` runs one with that
environment under ``timeout -s KILL``. The node is called ``localhost`` and listens on
127.0.0.1; the ports are free ones picked at start.

Typical use::

    with SlurmCluster(tmp_dir, partitions=("cpu", "gpu")) as cluster:
        subprocess.run([...], env=cluster.env)
        records = cluster.jobs()
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Daemons and client commands, by route; a missing one makes the SLURM tests skip.
CORE_COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "srun")
ACCOUNTING_COMMANDS = ("slurmdbd", "mariadbd", "sacct", "sacctmgr")
# Client commands that get a wrapper fixing SLURM_CONF (see SlurmCluster.env).
CLIENT_COMMANDS = (
    "sbatch",
    "srun",
    "squeue",
    "scontrol",
    "sinfo",
    "scancel",
    "sacct",
    "sacctmgr",
    "sshare",
)
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
NODE = "localhost"


def _which(cmd: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN_DIRS)
    return shutil.which(cmd, path=path)


def missing_commands(accounting: bool = True) -> list[str]:
    """Names of the SLURM, munge (and MariaDB) commands that are not installed."""
    needed = CORE_COMMANDS + (ACCOUNTING_COMMANDS if accounting else ())
    return [c for c in needed if _which(c) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _node_hardware() -> dict[str, str]:
    """CPU and memory layout of this machine as ``slurmd -C`` reports it."""
    out = subprocess.run(
        ["timeout", "-s", "KILL", "30", _which("slurmd") or "slurmd", "-C"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    first = out.splitlines()[0]
    fields = dict(item.split("=", 1) for item in first.split() if "=" in item)
    fields.pop("NodeName", None)
    return fields


@dataclass
class _Daemon:
    name: str
    pid_file: Path
    wrapper: subprocess.Popen
    log_file: Path


@dataclass
class SlurmCluster:
    """A single-node SLURM cluster under ``root`` (created if missing, never deleted here).

    Parameters
    ----------
    root : folder for every file of the cluster; keep its path short (sockets live there).
    partitions : partition names, all on the one node; the first is the default.
    gpus : fake GPUs the node offers (``Gres=gpu:<gpus>``), at least 1.
    accounting : run slurmdbd with a private MariaDB so that ``sacct`` works; without it,
        ``sacct`` fails as on clusters without slurmdbd and jobs are read with ``scontrol``.
    cpus : CPUs the node offers; more than the machine has lets short jobs overlap (the
        node then trusts the configuration, ``SlurmdParameters=config_overrides``); None:
        the machine's own.
    min_job_age : seconds a finished job stays visible to ``squeue``/``scontrol``
        (``MinJobAge``); above the SLURM executor plugin's 180 s maximum poll interval.
    lifetime_s : hard limit on every daemon's life (``timeout -s KILL``), in seconds.
    """

    root: Path
    partitions: tuple[str, ...] = ("cpu", "gpu")
    gpus: int = 1
    accounting: bool = True
    cpus: int | None = None
    min_job_age: int = 600
    lifetime_s: int = 1800
    cluster_name: str = "csmiltest"
    _daemons: list[_Daemon] = field(default_factory=list, init=False, repr=False)
    _ports: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        if self.gpus < 1:
            raise ValueError(f"gpus must be >= 1, got {self.gpus}")
        if not self.partitions:
            raise ValueError("partitions must name at least one partition")
        missing = missing_commands(self.accounting)
        if missing:
            raise RuntimeError(
                f"cannot boot SLURM: commands not installed: {missing}; run .ci/slurm-setup.sh "
                "(Debian: munge slurmctld slurmd slurm-client slurmdbd mariadb-server)"
            )
        self.etc = self.root / "etc"
        self.conf_path = self.etc / "slurm.conf"
        self.started_at = _dt.datetime.now() - _dt.timedelta(minutes=1)

    # -- environment ---------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The environment for client commands: this one without any SLURM_* from an
        enclosing job, with ``SLURM_CONF`` pointing at this cluster and ``<root>/bin`` first
        on PATH.

        ``<root>/bin`` holds wrappers of the client commands that set ``SLURM_CONF`` again:
        the SLURM executor's job step (snakemake-executor-plugin-slurm-jobstep) removes every
        SLURM_* variable but a few before it calls ``srun`` inside a job, so an ``srun``
        relying on ``SLURM_CONF`` (rather than /etc/slurm/slurm.conf) would find no cluster.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf_path)
        env["PATH"] = os.pathsep.join([str(self.root / "bin"), env.get("PATH", "")])
        return env

    def _write_client_wrappers(self) -> None:
        bin_dir = self.root / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        for cmd in CLIENT_COMMANDS:
            real = _which(cmd)
            if real is None:
                continue
            wrapper = bin_dir / cmd
            wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf_path}" exec "{real}" "$@"\n')
            os.chmod(wrapper, 0o755)

    def command(
        self, args: list[str], timeout_s: int = 30, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run a client command against this cluster (under ``timeout -s KILL``)."""
        proc = subprocess.run(
            ["timeout", "-s", "KILL", str(timeout_s), *args],
            capture_output=True,
            text=True,
            env=self.env,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed with exit code {proc.returncode}:\n"
                f"{proc.stdout}\n{proc.stderr}\n{self.log_tail()}"
            )
        return proc

    # -- configuration -------------------------------------------------------------------

    def _write_configs(self) -> None:
        for sub in ("etc", "munge", "state", "spool", "run", "log", "dev", "db"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged wants its socket folder reachable by every user.
        os.chmod(self.root, 0o711)
        os.chmod(self.root / "munge", 0o711)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)

        devices = []
        for i in range(self.gpus):
            dev = self.root / "dev" / f"nvidia{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            devices.append(str(dev))

        p = self._ports
        for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb"):
            p.setdefault(name, _free_port())
        hw = _node_hardware()
        overcommit = self.cpus is not None and self.cpus > int(hw.get("CPUs", "1"))
        if overcommit:
            hw = {"CPUs": str(self.cpus), "RealMemory": hw.get("RealMemory", "1000")}
        node_hw = " ".join(f"{k}={v}" for k, v in hw.items())
        self.memory_mb = int(hw.get("RealMemory", "1000"))
        sock = self.root / "munge" / "munge.socket"
        r = self.root
        lines = [
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={NODE}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={sock}",
            f"SlurmctldPort={p['slurmctld']}",
            f"SlurmdPort={p['slurmd']}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No systemd and no cgroup hierarchy of our own: track processes via /proc.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/affinity",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "DefMemPerCPU=1000",
            # Reject at submission what can never run, instead of pending forever.
            "EnforcePartLimits=ALL",
            f"MinJobAge={self.min_job_age}",
            "GresTypes=gpu",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "KillWait=5",
            "InactiveLimit=0",
            "Waittime=0",
        ]
        if overcommit:
            lines.append("SlurmdParameters=config_overrides")
        if self.accounting:
            lines += [
                "AccountingStorageType=accounting_storage/slurmdbd",
                f"AccountingStorageHost={NODE}",
                f"AccountingStoragePort={p['slurmdbd']}",
                # The munge socket for connections to slurmdbd (AuthInfo does not cover them).
                f"AccountingStoragePass={sock}",
                # Count GPUs among a job's allocated TRES (sacct's AllocTRES).
                "AccountingStorageTRES=gres/gpu",
                "AccountingStoreFlags=job_comment",
            ]
        else:
            lines.append("AccountingStorageType=accounting_storage/none")
        lines.append(
            f"NodeName={NODE} NodeAddr=127.0.0.1 {node_hw} Gres=gpu:{self.gpus} State=UNKNOWN"
        )
        for i, part in enumerate(self.partitions):
            default = "YES" if i == 0 else "NO"
            lines.append(
                f"PartitionName={part} Nodes={NODE} Default={default} MaxTime=INFINITE State=UP"
            )
        self.conf_path.write_text("\n".join(lines) + "\n")
        self._write_client_wrappers()

        gres = ["AutoDetect=off"] + [f"NodeName={NODE} Name=gpu File={d}" for d in devices]
        (self.etc / "gres.conf").write_text("\n".join(gres) + "\n")

        if self.accounting:
            dbd = self.etc / "slurmdbd.conf"
            dbd.write_text(
                "\n".join(
                    [
                        "AuthType=auth/munge",
                        f"AuthInfo=socket={sock}",
                        f"DbdHost={NODE}",
                        "DbdAddr=127.0.0.1",
                        f"DbdPort={p['slurmdbd']}",
                        "SlurmUser=root",
                        f"PidFile={r / 'run' / 'slurmdbd.pid'}",
                        f"LogFile={r / 'log' / 'slurmdbd.log'}",
                        "DebugLevel=info",
                        "StorageType=accounting_storage/mysql",
                        "StorageHost=127.0.0.1",
                        f"StoragePort={p['mariadb']}",
                        "StorageUser=root",
                        "StorageLoc=slurm_acct_db",
                    ]
                )
                + "\n"
            )
            os.chmod(dbd, 0o600)

    # -- daemons -------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], pid_file: Path) -> _Daemon:
        log_file = self.root / "log" / f"{name}.out"
        with open(log_file, "ab") as out:
            wrapper = subprocess.Popen(
                ["timeout", "-s", "KILL", str(self.lifetime_s), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )
        daemon = _Daemon(name, pid_file, wrapper, log_file)
        self._daemons.append(daemon)
        return daemon

    def _wait(self, what: str, ready, daemon: _Daemon | None, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            if daemon is not None and daemon.wrapper.poll() is not None:
                raise RuntimeError(
                    f"{daemon.name} exited with code {daemon.wrapper.returncode} before "
                    f"{what}:\n{self.log_tail()}"
                )
            time.sleep(0.2)
        raise RuntimeError(
            f"timed out after {timeout_s:.0f} s waiting for {what}\n{self.log_tail()}"
        )

    def start(self, timeout_s: float = 60) -> SlurmCluster:
        """Write the configuration and start the daemons; return once the node is idle."""
        t0 = time.monotonic()
        self._write_configs()
        r = self.root
        try:
            sock = r / "munge" / "munge.socket"
            d = self._spawn(
                "munged",
                [
                    _which("munged"),
                    "--foreground",
                    f"--key-file={r / 'munge' / 'munge.key'}",
                    f"--socket={sock}",
                    f"--pid-file={r / 'run' / 'munged.pid'}",
                    f"--log-file={r / 'log' / 'munged.log'}",
                    f"--seed-file={r / 'munge' / 'munge.seed'}",
                ],
                r / "run" / "munged.pid",
            )
            self._wait("the munge socket", sock.exists, d, timeout_s)

            if self.accounting:
                port = self._ports["mariadb"]
                d = self._spawn(
                    "mariadbd",
                    [
                        _which("mariadbd"),
                        "--no-defaults",
                        f"--datadir={r / 'db'}",
                        f"--socket={r / 'run' / 'mariadb.sock'}",
                        f"--pid-file={r / 'run' / 'mariadbd.pid'}",
                        f"--port={port}",
                        "--bind-address=127.0.0.1",
                        # A throw-away database reachable only from this machine and only
                        # for the lifetime of the test: no grant tables to set up.
                        "--skip-grant-tables",
                        "--user=root",
                        "--innodb-buffer-pool-size=32M",
                        f"--log-error={r / 'log' / 'mariadbd.log'}",
                    ],
                    r / "run" / "mariadbd.pid",
                )
                self._wait("MariaDB", lambda: _port_open(port), d, timeout_s)
                dbd_port = self._ports["slurmdbd"]
                d = self._spawn("slurmdbd", [_which("slurmdbd"), "-D"], r / "run" / "slurmdbd.pid")
                self._wait("slurmdbd", lambda: _port_open(dbd_port), d, timeout_s)
                self.command(["sacctmgr", "-i", "add", "cluster", self.cluster_name], timeout_s=30)

            d = self._spawn(
                "slurmctld", [_which("slurmctld"), "-D", "-i"], r / "run" / "slurmctld.pid"
            )
            self._wait(
                "slurmctld",
                lambda: self.command(["scontrol", "ping"], check=False).returncode == 0,
                d,
                timeout_s,
            )
            d = self._spawn(
                "slurmd", [_which("slurmd"), "-D", "-N", NODE], r / "run" / "slurmd.pid"
            )
            self._wait("an idle node", self._node_idle, d, timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("SLURM cluster up under %s in %.1f s", r, time.monotonic() - t0)
        return self

    def _node_idle(self) -> bool:
        proc = self.command(["sinfo", "-h", "-N", "-o", "%T"], check=False)
        states = proc.stdout.split()
        return proc.returncode == 0 and bool(states) and all(s == "idle" for s in states)

    def _own_pid(self, daemon: _Daemon) -> int | None:
        """The daemon's PID from its PID file, if that process is the wrapper's child."""
        try:
            pid = int(daemon.pid_file.read_text().split()[0])
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return pid if ppid == daemon.wrapper.pid else None

    def stop(self, timeout_s: float = 30) -> None:
        """Stop the daemons this object started, newest first; never any other process."""
        while self._daemons:
            daemon = self._daemons.pop()
            if daemon.wrapper.poll() is not None:
                continue
            pid = self._own_pid(daemon)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
            else:
                # No PID file (yet): timeout relays SIGTERM to the daemon it wraps.
                daemon.wrapper.terminate()
            try:
                daemon.wrapper.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s; killing it", daemon.name, timeout_s)
                pid = self._own_pid(daemon)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                daemon.wrapper.kill()
                daemon.wrapper.wait(timeout=timeout_s)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- records -------------------------------------------------------------------------

    def jobs(self) -> list[dict]:
        """One record per job of this cluster, oldest first: ``id``, ``name``, ``partition``,
        ``state``, ``exit_code``, ``comment`` (Snakemake writes the rule there) and ``gpus``,
        the number of GPUs SLURM allocated to the job; from ``scontrol`` also the request,
        ``tres_per_job`` (``--gpus``) and ``tres_per_node`` (``--gres``).

        From slurmdbd (``sacct``, AllocTRES ``gres/gpu=N``) with accounting, else from the
        controller's memory (``scontrol -d show job``, JOB_GRES ``gpu:N``; finished jobs stay
        there ``min_job_age`` seconds).
        """
        if self.accounting:
            cols = ["JobID", "JobName", "Partition", "State", "ExitCode", "AllocTRES", "Comment"]
            proc = self.command(
                [
                    "sacct",
                    "--allusers",
                    "--allocations",
                    "--noheader",
                    "--parsable2",
                    f"--starttime={self.started_at:%Y-%m-%dT%H:%M:%S}",
                    "--endtime=now",
                    f"--format={','.join(cols)}",
                ]
            )
            rows = [line.split("|", len(cols) - 1) for line in proc.stdout.splitlines()]
            records = [
                _record(r[0], r[1], r[2], r[3], r[4], r[6], _count(r[5], r"gres/gpu=(\d+)"))
                for r in rows
                if len(r) == len(cols)
            ]
        else:
            proc = self.command(["scontrol", "-d", "-o", "show", "job"])
            records = []
            for line in proc.stdout.splitlines():
                kv = dict(item.split("=", 1) for item in line.split() if "=" in item)
                if "JobId" not in kv:
                    continue
                records.append(
                    _record(
                        kv["JobId"],
                        kv.get("JobName", ""),
                        kv.get("Partition", ""),
                        kv.get("JobState", ""),
                        kv.get("ExitCode", ""),
                        kv.get("Comment", ""),
                        _count(kv.get("JOB_GRES", ""), r"gpu(?::[^:(,]+)?:(\d+)"),
                        tres_per_job=kv.get("TresPerJob", ""),
                        tres_per_node=kv.get("TresPerNode", ""),
                    )
                )
        return sorted(records, key=lambda rec: int(rec["id"].split("_")[0]))

    def log_tail(self, n_chars: int = 3000) -> str:
        """The end of every daemon log, for error messages."""
        parts = []
        for p in sorted((self.root / "log").glob("*")):
            try:
                text = p.read_text(errors="replace")[-n_chars:]
            except OSError:
                continue
            if text.strip():
                parts.append(f"--- {p.name}\n{text}")
        return "\n".join(parts)


def _count(text: str, pattern: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


def _record(job_id, name, partition, state, exit_code, comment, gpus, **extra) -> dict:
    return {
        **extra,
        "id": job_id,
        "name": name,
        "partition": partition,
        "state": state,
        "exit_code": exit_code,
        "comment": comment.strip(),
        "gpus": gpus,
    }
