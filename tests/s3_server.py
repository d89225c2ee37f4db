"""A real S3-compatible server for integration tests: a one-node Ceph cluster with the RADOS
Gateway, all on 127.0.0.1, in a temp folder (see /work/shared/S3.md for the facts it rests on).

    monitor (ceph-mon, msgr v1)  <-  OSD (ceph-osd, memstore: objects in RAM)  <-  radosgw (beast)
                                                                                    ^ S3 over HTTP

Every daemon runs in the foreground (``-f``) as a child of this process, all in one process
group that no other process shares, so `stop` can SIGKILL the group and wait for each child:
nothing outlives the cluster, and no stale OSD makes the next cluster refuse ("wrong fsid").
Each daemon also gets SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG), so a
killed test run leaves no cluster behind: start and restart from a thread that outlives it.
Ports are picked free at start, so two clusters on one machine do not collide.

`restart_gateway` (or `kill_gateway` ... `start_gateway`) replaces the radosgw process, which is
the S3 server a client talks to: uploads in flight are cut off, stored objects survive (they
live in the OSD). The monitor and OSD are not restarted: memstore keeps objects only in the
OSD's memory, so a restarted OSD comes back empty and the cluster stalls on PGs it has lost.
`start` takes ~12 s; the first bucket write 2-3 s more while the gateway creates its pools; a
gateway restart well under a second.

Auth inside the cluster is off; S3 requests are signed with the keys of a user created at
start (`access_key`, `secret_key`).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

BINARIES = (
    "ceph-mon",
    "ceph-osd",
    "radosgw",
    "radosgw-admin",
    "ceph",
    "ceph-authtool",
    "monmaptool",
)
GATEWAY = "client.rgw.test"
ACCESS_KEY = "batchgentestaccess"
SECRET_KEY = "batchgentestsecret0123456789"


class CephError(RuntimeError):
    """A daemon failed to start or a ceph command failed; the message holds its log tail."""


def missing_binaries() -> list[str]:
    """The Ceph programs this helper needs that are not on PATH."""
    return [name for name in BINARIES if shutil.which(name) is None]


def _die_with_parent() -> None:
    """In the child before exec: ask for SIGKILL when the parent thread ends (Linux)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CephS3Server:
    """One Ceph cluster + gateway in `root` (created if missing). Not thread-safe.

    Use as a context manager, or call `start` once and then always `stop`."""

    def __init__(self, root: Path, memstore_bytes: int = 2 << 30) -> None:
        self.root = Path(root)
        self.memstore_bytes = memstore_bytes
        self.mon_port = free_port()
        self.http_port = free_port()
        self.fsid = str(uuid.uuid4())
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self._pgid: int | None = None
        self._mon: subprocess.Popen[bytes] | None = None
        self._osd: subprocess.Popen[bytes] | None = None
        self._gateway: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def conf(self) -> Path:
        return self.root / "ceph.conf"

    def env(self) -> dict[str, str]:
        """Environment variables that make boto3/s3fs/pyarrow sign requests for this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def __enter__(self) -> CephS3Server:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Create the cluster in root, start it and wait until the gateway answers HTTP; once
        per instance. CephError (with the daemons' log tails) on failure, after stopping the
        daemons started so far."""
        if self._started:
            raise RuntimeError("a CephS3Server starts once; make a new one")
        self._started = True
        try:
            self._create()
            self.start_gateway(timeout)
            self._ceph("radosgw-admin", "user", "create", "--uid=batchgen",
                       "--display-name=batchgen", f"--access-key={self.access_key}",
                       f"--secret={self.secret_key}")  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGKILL every daemon and wait until each has exited. Idempotent."""
        self._kill_group()

    def restart_gateway(self, down_s: float = 0.0, timeout: float = 60.0) -> None:
        """SIGKILL radosgw (requests in flight are cut off), stay down down_s seconds, start it
        again and wait for HTTP. Objects are kept: they live in the OSD."""
        self.kill_gateway()
        time.sleep(down_s)
        self.start_gateway(timeout)

    def kill_gateway(self) -> None:
        """SIGKILL radosgw and wait for it to exit; the monitor and OSD keep running."""
        if self._gateway is not None:
            self._gateway.kill()
            self._gateway.wait()
            self._gateway = None

    def gateway_bytes_received(self) -> int:
        """TCP bytes received so far on the gateway's open client connections (`ss -i`,
        iproute2): lets a test see an upload's body arriving. Closed connections drop out."""
        listing = subprocess.run(
            ["ss", "-Htin", "state", "established", f"( sport = :{self.http_port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sum(int(n) for n in re.findall(r"bytes_received:(\d+)", listing))

    def start_gateway(self, timeout: float = 60.0) -> None:
        """Start radosgw (after `kill_gateway`, or at cluster start) and wait for HTTP."""
        self._start_gateway()
        self._wait_for_http(timeout)

    # -- creation ----------------------------------------------------------------------------

    def _create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in ("mon", "osd", "run", "log"):
            (self.root / folder).mkdir(exist_ok=True)
        self.conf.write_text(self._config_text())
        keyring = self.root / "keyring"
        self._run("ceph-authtool", "--create-keyring", str(keyring), "--gen-key", "-n", "mon.",
                  "--cap", "mon", "allow *")  # fmt: skip
        monmap = self.root / "monmap"
        self._run("monmaptool", "--create", "--fsid", self.fsid, "--addv", "a",
                  f"[v1:127.0.0.1:{self.mon_port}]", str(monmap))  # fmt: skip
        self._ceph("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap), "--keyring",
                   str(keyring))  # fmt: skip
        self._start_mon()
        osd_uuid = str(uuid.uuid4())
        osd_id = self._ceph("ceph", "osd", "new", osd_uuid).strip()
        assert osd_id == "0", osd_id
        (self.root / "osd" / "ceph-0").mkdir(exist_ok=True)
        self._ceph("ceph-osd", "--mkfs", "-i", "0", "--osd-uuid", osd_uuid)
        # the OSD places itself in the CRUSH map through the CLI, not on start (see module doc)
        self._ceph("ceph", "osd", "crush", "add", "osd.0", "1.0", "root=default", "host=localhost")
        self._start_osd()

    def _config_text(self) -> str:
        root = self.root
        return f"""[global]
fsid = {self.fsid}
mon host = v1:127.0.0.1:{self.mon_port}
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
osd class update on start = false
osd crush update on start = false
mon allow pool size one = true
mon allow pool delete = true
mon data avail crit = 0
mon data avail warn = 0
mon warn on pool no redundancy = false
run dir = {root}/run
admin socket = {root}/run/$cluster-$name.asok
pid file = {root}/run/$cluster-$name.pid
log file = {root}/log/$name.log
mon data = {root}/mon/$cluster-$id
osd data = {root}/osd/$cluster-$id
keyring = {root}/keyring
crash dir = {root}/log
mon cluster log file = {root}/log/cluster.log
debug ms = 0

[{GATEWAY}]
rgw frontends = beast endpoint=127.0.0.1:{self.http_port}
rgw dns name = 127.0.0.1
rgw thread pool size = 64
# with its metadata cache on, a gateway notifies its peers' watches on every bucket create; a
# killed gateway's watches linger 30 s, so the first create after a restart would stall 30 s
rgw cache enabled = false
rgw enable usage log = false
log file = {root}/log/rgw.log
"""

    # -- daemons -----------------------------------------------------------------------------

    def _start_mon(self) -> None:
        self._mon = self._spawn("ceph-mon", "-f", "-i", "a")

    def _start_osd(self) -> None:
        self._osd = self._spawn("ceph-osd", "-f", "-i", "0")

    def _start_gateway(self) -> None:
        self._gateway = self._spawn("radosgw", "-f", "-n", GATEWAY)

    def _spawn(self, program: str, *args: str) -> subprocess.Popen[bytes]:
        """Start a daemon in the cluster's process group (the first one creates it)."""
        name = program.removeprefix("ceph-")
        out = open(self.root / "log" / f"{name}.stdout", "ab")  # noqa: SIM115 (child owns it)
        try:
            process = subprocess.Popen(
                [program, "-c", str(self.conf), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=self._pgid or 0,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        if self._pgid is None:
            self._pgid = process.pid
        return process

    def _kill_group(self) -> None:
        processes = [p for p in (self._gateway, self._osd, self._mon) if p is not None]
        if self._pgid is not None:
            try:
                os.killpg(self._pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in processes:
            process.wait()
        self._mon = self._osd = self._gateway = None
        self._pgid = None

    def _alive(self) -> None:
        for process, name in ((self._mon, "mon"), (self._osd, "osd"), (self._gateway, "rgw")):
            if process is not None and process.poll() is not None:
                raise CephError(f"{name} exited with {process.returncode}\n{self.log_tail(name)}")

    def _wait_for_http(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._alive()
            try:
                with urllib.request.urlopen(self.endpoint, timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # any HTTP answer (403 for an anonymous listing) means it serves
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise CephError(f"radosgw did not answer in {timeout} s\n{self.log_tail('rgw')}")
            time.sleep(0.2)

    # -- commands ----------------------------------------------------------------------------

    def _ceph(self, program: str, *args: str) -> str:
        return self._run(program, "-c", str(self.conf), *args)

    def _run(self, program: str, *args: str) -> str:
        result = subprocess.run([program, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise CephError(
                f"{program} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result.stdout

    def log_tail(self, name: str, num_lines: int = 30) -> str:
        """The end of a daemon's log (name: mon, osd, rgw) for error messages."""
        lines: list[str] = []
        for path in sorted((self.root / "log").glob(f"*{name}*")):
            text = path.read_text(errors="replace").splitlines()
            lines += [f"--- {path.name}", *text[-num_lines:]]
        return "\n".join(lines)
