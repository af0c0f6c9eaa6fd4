"""`assistant-ingest dev` as a person runs it: in the background or in a terminal,
used through the key and the addresses it prints, and stopped by a signal, after
which none of its processes and none of its ports is left."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from cli.dev import ENV_FILE, KEY_FILE, read_env_file
from cli.embedded import free_port
from tests.stack import wait_until

ROOT = Path(__file__).resolve().parent.parent
STARTED = "Press Ctrl-C to stop"

# `dev` starts servers, the edge and workers as processes of its own.
pytestmark = pytest.mark.e2e


@dataclass
class Dev:
    pid: int
    port: int
    data: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None  # when started in the foreground

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def printed(self, label: str) -> str:
        for line in self.log.read_text().splitlines():
            if line.strip().startswith(label):
                return line.split(":", 1)[1].split()[0]
        raise AssertionError(f"{label} not printed: {self.log.read_text()}")

    def get(self, path: str, key: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return requests.get(self.url + path, headers=headers, timeout=30)


def dev_env() -> dict[str, str]:
    """The caller's environment without what would point dev's children elsewhere."""
    env = dict(os.environ)
    for name in ("MONGODB_URI", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "METRICS_PORT"):
        env.pop(name, None)
    return env


def start(tmp_path: Path, data: Path, style: str) -> Dev:
    """`style`: "nohup" (`nohup dev > log &`), "background" (`dev > log &`), both from
    a non-interactive shell, which starts them with SIGINT ignored; "terminal":
    the foreground job of a session, as a terminal's shell runs it."""
    port = free_port()
    log = tmp_path / f"dev-{style}-{port}.log"
    args = [sys.executable, "-m", "cli.main", "dev", "--port", str(port), "--data-dir", str(data)]
    if style == "terminal":
        with log.open("wb") as out:
            process = subprocess.Popen(
                args,
                cwd=ROOT,
                env=dev_env(),
                stdout=out,
                stderr=out,
                start_new_session=True,
                # A terminal's shell runs its foreground job with SIGHUP at its
                # default, even when the suite itself runs under `nohup`.
                preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
            )
        dev = Dev(process.pid, port, data, log, process)
    else:
        command = shlex.join(args) + f" > {shlex.quote(str(log))} 2>&1 < /dev/null &"
        if style == "nohup":
            command = "nohup " + command
        shell = subprocess.run(
            ["sh", "-c", command + " echo $!"],
            cwd=ROOT,
            env=dev_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        dev = Dev(int(shell.stdout.strip()), port, data, log)
    deadline = time.monotonic() + 120
    while STARTED not in (log.read_text() if log.exists() else ""):
        if not alive(dev.pid) or time.monotonic() > deadline:
            stop(dev, signal.SIGKILL)
            raise AssertionError(f"dev did not start: {log.read_text()}")
        time.sleep(0.2)
    return dev


def processes() -> dict[int, tuple[str, int]]:
    """Every process: its state and its parent."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        found[int(entry.name)] = (fields[0], int(fields[1]))
    return found


def family(pid: int) -> set[int]:
    """The process and all its descendants."""
    children: dict[int, list[int]] = defaultdict(list)
    for child, (_, parent) in processes().items():
        children[parent].append(child)
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        todo.extend(children[current])
    return found


def alive(pid: int) -> bool:
    state = processes().get(pid)
    return state is not None and state[0] not in ("Z", "X")


def listeners(ports: list[int]) -> set[int]:
    """The processes listening on any of `ports` (IPv4 or IPv6)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (Path("/proc/net") / table).read_text().splitlines()[1:]:
                fields = line.split()
                port, state = int(fields[1].rsplit(":", 1)[1], 16), fields[3]
                if state == "0A" and port in ports:  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    found = set()
    for pid in processes():
        with contextlib.suppress(OSError):
            for fd in (Path("/proc") / str(pid) / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        found.add(pid)
    return found


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""  # gone meanwhile


def stop(dev: Dev, sig: int) -> None:
    """Signal dev alone, as `kill` does; then everything it started must go,
    within a bound."""
    servers = read_env_file(dev.data)
    ports = [dev.port] + [
        int(servers[name].rsplit(":", 1)[1].split("/")[0]) for name in ("MONGODB_URI", "REDIS_URL")
    ]
    # Listeners first: one forked meanwhile (dev's edge may still be starting
    # its worker) is then in the family read after.
    held = listeners(ports)
    everyone = family(dev.pid)
    os.kill(dev.pid, sig)
    try:
        if dev.process is not None:
            dev.process.wait(90)
        wait_until(lambda: not any(alive(pid) for pid in everyone), timeout=90)
    finally:
        for pid in everyone:  # only on failure is any left to clean up
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert held and held <= everyone, (held, everyone)  # dev's processes served its ports
    # Nothing listens on its ports but, at most, another test's server that
    # took one of them since (the tests share the machine's ports): never a
    # process of dev's, nor one named by its data folder, whatever its parent.
    for pid in listeners(ports):
        assert pid not in everyone and str(dev.data) not in command_line(pid), pid
    assert not (dev.data / ENV_FILE).exists()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env=dev_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_dev_in_the_background_serves_its_key_keys_and_metrics_and_stops_on_sigint(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    dev = start(tmp_path, data, "nohup")
    try:
        assert len(family(dev.pid)) >= 8  # two servers, the edge, three workers, beat
        key = dev.printed("API key")
        assert stat.S_IMODE((data / KEY_FILE).stat().st_mode) == 0o600

        # The banner's command, run as shown (from where dev runs), with a loopback
        # endpoint, as the dev stack allows: the command judges as the stack does.
        (shown,) = [line for line in dev.log.read_text().splitlines() if "keys create" in line]
        hook = "http://127.0.0.1:8765/t"
        args = [*shlex.split(shown.replace("NAME", "another")), "--webhook-url", hook]
        env = {**dev_env(), "PATH": "/usr/bin:/bin"}  # the venv not activated
        made = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, (shown, made.stderr)
        another = json.loads(made.stdout)["api_key"]
        assert dev.get("/v1/models", another).status_code == 200
        assert dev.get("/v1/webhook_endpoint", another).json()["url"] == hook

        headers = {"Authorization": f"Bearer {key}", "Prefer": "wait=30"}
        created = requests.post(
            dev.url + "/v1/assistants", json={"model": "m"}, headers=headers, timeout=60
        )
        assert created.status_code == 200, created.text
        lines = b'{"body": {"model": "m"}}\n' * 3
        batch = requests.post(
            dev.url + "/v1/batches",
            data=lines,
            headers={**headers, "Content-Type": "application/x-ndjson"},
            timeout=60,
        ).json()
        wait_until(
            lambda: dev.get(f"/v1/batches/{batch['id']}", key).json()["status"] == "completed"
        )
        # The workers' series, at the edge's /metrics: dev gives them one folder.
        # A worker counts a chunk just after recording it, and the record is what
        # completes the batch: the count is awaited.
        jobs = "assistant_ingest_jobs_finished_total"

        def counted() -> str | None:
            text = requests.get(dev.url + "/metrics", timeout=30).text
            return text if metric(text, jobs, kind="batch", outcome="succeeded") == 3 else None

        text = wait_until(counted)
        assert metric(text, jobs, kind="single", outcome="succeeded") >= 1
        assert metric(text, jobs, kind="batch", outcome="succeeded") == 3
        assert metric(text, "assistant_ingest_job_latency_seconds_count", kind="batch") == 3
        assert metric(text, "assistant_ingest_batch_chunks_processed_total") == 1

        # nohup asked to outlive the terminal's hangup: dev keeps it so.
        os.kill(dev.pid, signal.SIGHUP)
        time.sleep(1)
        assert alive(dev.pid)
        assert dev.get("/v1/models", key).status_code == 200
    finally:
        stop(dev, signal.SIGINT)

    gone = cli("keys", "create", "--tenant", "late", "--data-dir", str(data))
    assert gone.returncode == 2
    assert gone.stderr.startswith("error: no dev stack runs on ")
    assert len(gone.stderr.splitlines()) == 1


def test_dev_prints_the_same_key_on_every_start_and_stops_on_sigterm_and_sighup(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first = start(tmp_path, data, "background")
    try:
        key = first.printed("API key")
        assert "(new, kept in" in first.log.read_text()
    finally:
        stop(first, signal.SIGTERM)

    again = start(tmp_path, data, "terminal")
    try:
        assert again.printed("API key") == key
        assert again.get("/v1/models", key).status_code == 200
    finally:
        stop(again, signal.SIGHUP)
