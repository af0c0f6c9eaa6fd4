"""`assistant-ingest dev`: the whole stack on this machine, with embedded servers.

Every child runs in a session of its own, so a Ctrl-C or the hangup of a
closed terminal reaches this supervisor only, which then stops them in order:
the edge, the workers and beat first, the servers they use last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

# The local layout, as in production: single creates apart from batch chunks,
# so a large batch never delays a `Prefer: wait` request; webhook deliveries
# apart from both, so a receiver that hangs never delays a create; and one beat.
DEV_WORKERS = {
    # Threads: the single creates its messages carry are processed together
    # while they run at once (worker.tasks), and they wait on the store, not the CPU.
    "worker-single": (
        "worker",
        "--queues",
        "single,maintenance",
        "--pool",
        "threads",
        "--concurrency",
        "8",
        "--hostname",
        "single@%h",
    ),
    # One process: here the store is one process on the same cores and serves
    # one command at a time, so a second bulk process mostly waits for it and
    # takes CPU from it. `bench.tenants --bulk-processes 1,2`, two runs: the
    # big batch as fast or faster with one (2,030 and 1,795 lines/s against
    # 1,737 and 1,797), and another tenant's small batch beside it 2.2x and
    # 2.3x its time alone against 3.3x and 2.5x. Beside MongoDB, more.
    "worker-bulk": (
        "worker",
        "--queues",
        "bulk",
        "--concurrency",
        "1",
        "--hostname",
        "bulk@%h",
    ),
    "worker-webhooks": ("worker", "--queues", "webhooks", "--hostname", "webhooks@%h"),
}

# In the data folder: the running stack's servers, for other commands
# (`keys --data-dir`, or `set -a; . .data/dev.env`), removed when it stops;
# and the dev tenants' API keys, kept so that every start prints the same one.
ENV_FILE = "dev.env"
KEY_FILE = "dev-keys.json"
PID_VARIABLE = "ASSISTANT_INGEST_DEV_PID"

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_SECONDS = 20  # for the children to finish what they hold before they are killed


class Stopped(BaseException):
    """A stop signal arrived (a BaseException, like KeyboardInterrupt, so that
    no `except Exception` on the way swallows it)."""


def run_dev(args: argparse.Namespace) -> int:
    """Valkey, SecantusDB, the edge, workers and beat as child processes, until a
    stop signal (SIGINT, SIGTERM, SIGHUP) or until one of them exits."""
    from cli.embedded import Server, start_mongo, start_valkey, wait_for_port

    data = args.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    running = read_env_file(data)
    if running and pid_alive(int(running.get(PID_VARIABLE, 0))):
        print(
            f"error: a dev stack already runs on {data} (pid {running[PID_VARIABLE]})",
            file=sys.stderr,
        )
        return 1
    handle_stop_signals()
    servers: list[Server] = []
    children: list[subprocess.Popen[bytes]] = []
    # One folder for the metrics of the edge and of every worker, so the edge's
    # /metrics shows them all; emptied on each start, as prometheus_client needs.
    metrics_dir = data / "metrics"
    logs = data / "logs"
    try:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir()
        logs.mkdir(exist_ok=True)
        servers.append(start_valkey(data / "valkey"))
        servers.append(start_mongo(data / "mongo"))
        valkey, mongo = servers
        env = {
            **os.environ,
            "MONGODB_URI": f"mongodb://127.0.0.1:{mongo.port}/assistant_ingest",
            "REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0",
            "WEBHOOK_ALLOW_PRIVATE": os.environ.get("WEBHOOK_ALLOW_PRIVATE", "true"),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            # The console is served over plain HTTP on loopback here.
            "CONSOLE_COOKIE_SECURE": os.environ.get("CONSOLE_COOKIE_SECURE", "false"),
        }
        tenant, api_key, secret, reused = dev_key(env["MONGODB_URI"], data, args.tenant)
        write_env_file(data, env)

        def spawn(name: str, *extra: str) -> subprocess.Popen[bytes]:
            with (logs / f"{name}.log").open("ab") as out:
                child = subprocess.Popen(
                    [sys.executable, "-m", "cli.main", *extra],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            children.append(child)
            return child

        edge = spawn("api", "api", "--host", "127.0.0.1", "--port", str(args.port))
        for name, worker_args in DEV_WORKERS.items():
            spawn(name, *worker_args)
        spawn("beat", "beat", "--schedule", str(data / "celerybeat-schedule"))
        wait_for_port(args.port, edge, timeout=60)
        url = f"http://127.0.0.1:{args.port}"
        kept = f"kept in {data / KEY_FILE}" if reused else f"new, kept in {data / KEY_FILE}"
        print(f"assistant-ingest is running on {url}")
        print(f"  tenant:         {tenant}")
        print(f"  API key:        {api_key} ({kept})")
        print(f"  webhook secret: {secret}")
        print(f"  console:        {url}/console (sign in with the API key above)")
        print(f"  metrics:        {url}/metrics (the edge's and every worker's)")
        print(f"  data and logs:  {data}")
        print("Other commands reach this stack's servers through --data-dir or these:")
        print(f"  {own_command()} keys create --tenant NAME --data-dir {args.data_dir}")
        print(f"  export MONGODB_URI={env['MONGODB_URI']} REDIS_URL={env['REDIS_URL']}")
        print("Press Ctrl-C to stop (or send SIGTERM or SIGHUP).", flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a child process exited; stopping", file=sys.stderr)
        return 1
    except Stopped:
        return 0
    except RuntimeError as exc:  # a server or the edge did not start
        print(f"error: {exc}; see {logs}", file=sys.stderr)
        return 1
    finally:
        ignore_stop_signals()
        stop_children(children)
        for server in reversed(servers):
            server.stop()
        remove_env_file(data)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def own_command() -> str:
    """This command as it runs from here: `assistant-ingest` when that is on PATH,
    else its path (`.venv/bin/assistant-ingest` when run through bin/dev)."""
    script = Path(sys.executable).parent / "assistant-ingest"
    if not script.exists() or shutil.which("assistant-ingest") == str(script):
        return "assistant-ingest"
    try:
        return shlex.quote(str(script.relative_to(Path.cwd())))
    except ValueError:  # not below the working directory
        return shlex.quote(str(script))


def handle_stop_signals() -> None:
    """Stop on SIGINT, SIGTERM and SIGHUP, however the shell started us.

    A shell starts a background job with SIGINT ignored, and Python then
    leaves it ignored: installed here, `kill -INT` works in every launch
    style. SIGHUP is left ignored when it was ignored at start, as `nohup`
    does: that asks to outlive the terminal.
    """

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue
        signal.signal(sig, stop)


def ignore_stop_signals() -> None:
    """While stopping: another Ctrl-C must not cut the stop short."""
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, lambda *_: None)


def stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each (gunicorn and Celery stop their own processes), then
    whatever is left of their sessions is killed."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        # Each child leads a process group of its own: a pool process it left
        # behind is in it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)


def dev_key(mongodb_uri: str, data: Path, tenant: str) -> tuple[str, str, str, bool]:
    """The tenant's API key from the last start while it is still live, else a new
    one; the key file holds only that. Returns tenant, key, webhook secret and
    whether the key was reused."""
    from worker.settings import Settings
    from worker.store import tenants
    from worker.store.connection import Store
    from worker.store.indexes import ensure_indexes

    path = data / KEY_FILE
    try:
        saved = json.loads(path.read_text())
        keys: dict[str, str] = saved if isinstance(saved, dict) else {}
    except (OSError, ValueError):
        keys = {}
    store = Store.connect(Settings(mongodb_uri=mongodb_uri), timeout_ms=30_000)
    try:
        ensure_indexes(store)
        api_key = keys.get(tenant)
        reused = isinstance(api_key, str) and tenants.authenticate(store, api_key) == tenant
        if not reused:
            api_key = tenants.create_key(store, tenant).api_key
            keys[tenant] = api_key
            write_private(path, json.dumps(keys, indent=2) + "\n")
        doc = tenants.get(store, tenant)
        assert doc is not None and api_key is not None
        return tenant, api_key, tenants.current_secrets(doc)[0], reused
    finally:
        store.close()


def write_private(path: Path, text: str) -> None:
    """Readable by its owner only: it holds live API keys."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def write_env_file(data: Path, env: dict[str, str]) -> None:
    lines = [
        "# The servers of the running `assistant-ingest dev`; removed when it stops.",
        f"{PID_VARIABLE}={os.getpid()}",
        f"MONGODB_URI={env['MONGODB_URI']}",
        f"REDIS_URL={env['REDIS_URL']}",
        # What a command pointed at this stack must judge as the stack does.
        f"WEBHOOK_ALLOW_PRIVATE={env['WEBHOOK_ALLOW_PRIVATE']}",
    ]
    (data / ENV_FILE).write_text("\n".join(lines) + "\n")


def read_env_file(data: Path) -> dict[str, str]:
    """The variables a running dev stack wrote to `data`; empty when there is none."""
    try:
        text = (data / ENV_FILE).read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#"):
            found[name.strip()] = value.strip()
    return found


def remove_env_file(data: Path) -> None:
    if read_env_file(data).get(PID_VARIABLE) == str(os.getpid()):
        (data / ENV_FILE).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
