"""`assistant-ingest dev`: the whole stack on this machine, with embedded servers."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

# The local layout, as in production: single creates apart from batch chunks,
# so a large batch never delays a `Prefer: wait` request; webhook deliveries
# apart from both, so a receiver that hangs never delays a create; and one beat.
DEV_WORKERS = {
    "worker-single": (
        "worker",
        "--queues",
        "single,maintenance",
        "--hostname",
        "single@%h",
    ),
    "worker-bulk": ("worker", "--queues", "bulk", "--hostname", "bulk@%h"),
    "worker-webhooks": ("worker", "--queues", "webhooks", "--hostname", "webhooks@%h"),
}


def run_dev(args: argparse.Namespace) -> int:
    """Valkey, SecantusDB, the edge, workers and beat as child processes; Ctrl-C stops all."""
    from cli.embedded import start_mongo, start_valkey, wait_for_port

    data = args.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    valkey = start_valkey(data / "valkey")
    mongo = start_mongo(data / "mongo")
    env = {
        **os.environ,
        "MONGODB_URI": f"mongodb://127.0.0.1:{mongo.port}/assistant_ingest",
        "REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0",
        "WEBHOOK_ALLOW_PRIVATE": os.environ.get("WEBHOOK_ALLOW_PRIVATE", "true"),
    }
    me = [sys.executable, "-m", "cli.main"]
    children: list[subprocess.Popen[bytes]] = []
    logs = data / "logs"
    logs.mkdir(exist_ok=True)

    def spawn(name: str, *extra: str) -> subprocess.Popen[bytes]:
        out = (logs / f"{name}.log").open("ab")
        child = subprocess.Popen([*me, *extra], env=env, stdout=out, stderr=subprocess.STDOUT)
        children.append(child)
        return child

    try:
        key = subprocess.run(
            [*me, "keys", "create", "--tenant", args.tenant],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        edge = spawn("api", "api", "--host", "127.0.0.1", "--port", str(args.port))
        for name, worker_args in DEV_WORKERS.items():
            spawn(name, *worker_args)
        spawn("beat", "beat", "--schedule", str(data / "celerybeat-schedule"))
        wait_for_port(args.port, edge, timeout=60)
        info = json.loads(key)
        print(f"assistant-ingest is running on http://127.0.0.1:{args.port}")
        print(f"  tenant:         {info['tenant']}")
        print(f"  API key:        {info['api_key']}")
        print(f"  webhook secret: {info['webhook_secret']}")
        print(f"  data and logs:  {data}")
        print("Press Ctrl-C to stop.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a child process exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        mongo.stop()
        valkey.stop()
