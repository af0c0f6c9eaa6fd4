"""The Grafana dashboard, its provisioning, and how docker-compose.yml wires them up.

Every series and label a query names is checked against the metric objects the
code declares (worker.telemetry.metrics, api.metrics), so a renamed metric or label fails
here, not as an empty panel in production.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "assistant-ingest.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
PROMETHEUS = DEPLOY / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"

# Sample names each metric type exposes, beside the family name (the _created
# series are left out: multi-process mode, as the edge and workers run, has none).
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count"),
}
# Labels a sample carries beside its own: the bucket bound, and the target's.
BUCKET_LABELS = {"le"}
SCRAPE_LABELS = {"job", "instance"}

PROMQL_FUNCTIONS = {
    # Aggregations.
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values",
    # Functions the dashboard may reasonably use.
    "rate", "irate", "increase", "delta", "idelta", "deriv", "resets", "changes",
    "histogram_quantile", "abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max",
    "scalar", "vector", "time", "absent", "absent_over_time", "predict_linear", "sort",
    "sort_desc", "label_replace", "label_join", "avg_over_time", "min_over_time",
    "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "quantile_over_time",
}  # fmt: skip
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}

TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      |(?P<range>\[[^\]]*\])
      |(?P<matchers>\{(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^}"'])*\})
      |(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<number>\d[\w.]*)  # numbers and durations (offset 5m)
      |(?P<space>\s+)
      |(?P<other>.)""",
    re.VERBOSE,
)
MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def targets() -> list[tuple[str, str]]:
    return [
        (f"panel {panel.get('id')} {target.get('refId')}", target.get("expr", ""))
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


class _StandInRedis:
    """Just enough of redis-py for QueueDepth to collect: every queue is empty."""

    def pipeline(self, transaction: bool = True) -> _StandInRedis:
        self._calls = 0
        return self

    def llen(self, _key: str) -> None:
        self._calls += 1

    def execute(self) -> list[int]:
        return [0] * self._calls


@functools.cache
def declared_series() -> dict[str, set[str]]:
    """Every series name the edge and the workers expose, with the labels it carries."""
    from api import metrics as api_metrics
    from worker.telemetry import metrics as worker_metrics

    series: dict[str, set[str]] = {}
    for module in (worker_metrics, api_metrics):
        for obj in vars(module).values():
            if not isinstance(obj, MetricWrapperBase):
                continue
            # prometheus_client keeps a metric's label names only on this attribute.
            labels = set(obj._labelnames)
            for family in obj.describe():
                for suffix in SUFFIXES.get(family.type, ("",)):
                    extra = BUCKET_LABELS if suffix == "_bucket" else set()
                    series[family.name + suffix] = labels | extra
    # The queue depth gauge is a collector read at scrape time; its labels are
    # those of the samples it yields.
    depth = worker_metrics.QueueDepth(_StandInRedis(), "test")
    for family in [*depth.describe(), *depth.collect()]:
        labels = {label for sample in family.samples for label in sample.labels}
        for suffix in SUFFIXES.get(family.type, ("",)):
            series.setdefault(family.name + suffix, set()).update(labels)
    return series


def target_labels() -> set[str]:
    """Labels Prometheus adds to every sample: the scrape's and deploy/prometheus.yml's."""
    added = {
        relabel["target_label"]
        for job in load_yaml(PROMETHEUS)["scrape_configs"]
        for relabel in job.get("relabel_configs", [])
        if "target_label" in relabel
    }
    return SCRAPE_LABELS | added


def promql_problems(expr: str, series: dict[str, set[str]], extra_labels: set[str]) -> list[str]:
    """What a query names that does not exist: series, labels of a selector or of a
    grouping, and functions. Grafana's $__ variables stand for ranges."""
    expr = re.sub(r"\$__\w+", "5m", expr)
    tokens = [
        (match.lastgroup, match.group())
        for match in TOKEN.finditer(expr)
        if match.lastgroup != "space"
    ]
    problems: list[str] = []
    used: list[str] = []
    grouped: set[str] = set()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else (None, "")
        if kind == "matchers":
            problems.append(f"a selector without a series name: {text}")
        elif kind != "name" or text.lower() in KEYWORDS:
            pass
        elif text in GROUPING:
            if following[1] == "(":
                close = next(i for i in range(index, len(tokens)) if tokens[i][1] == ")")
                grouped.update(t for k, t in tokens[index + 2 : close] if k == "name")
                index = close
        elif following[1] == "(" or following[1] in {"by", "without"}:
            if text not in PROMQL_FUNCTIONS:
                problems.append(f"unknown function {text}")
        elif text not in series:
            problems.append(f"no such series: {text}")
        else:
            used.append(text)
            if following[0] == "matchers":
                for label in MATCHER.findall(_without_strings(following[1])[1:-1]):
                    if label not in series[text] | extra_labels:
                        problems.append(f"{text} has no label {label}")
                index += 1
        index += 1
    if not used:
        problems.append("names no series")
    available = set().union(*(series[name] for name in used)) | extra_labels
    problems += [f"no series here has the label {label}" for label in grouped - available]
    return problems


def _without_strings(matchers: str) -> str:
    # Matcher values may hold commas and operators; only the names matter here.
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', ",", matchers)


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(COMPOSE)["services"]
    return services


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> dict[PurePosixPath, Path]:
    """Container path -> host path of each bind mount from the repository."""
    found: dict[PurePosixPath, Path] = {}
    for volume in service.get("volumes", []):
        if not isinstance(volume, str):
            continue
        source, target, *_ = volume.split(":")
        if source.startswith(("./", "../")):
            found[PurePosixPath(target)] = (ROOT / source).resolve()
    return found


def container_to_host(service: dict[str, Any], path: str) -> Path | None:
    wanted = PurePosixPath(path)
    for target, source in mounts(service).items():
        if wanted == target or target in wanted.parents:
            return source / wanted.relative_to(target)
    return None


# --- the dashboard ---------------------------------------------------------------


def test_dashboard_has_what_grafana_needs() -> None:
    board = dashboard()
    assert isinstance(board["title"], str) and board["title"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert isinstance(board["schemaVersion"], int)
    panels = board["panels"]
    assert panels
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(panel_id, int) for panel_id in ids)
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        where = f"panel {panel['id']} ({panel.get('title')})"
        assert isinstance(panel.get("type"), str) and panel["type"], where
        assert panel.get("title"), where
        assert panel.get("datasource", {}).get("uid"), where
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in "xywh"), where
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, where
        assert grid["x"] + grid["w"] <= 24, f"{where} is wider than the 24-column grid"
        assert panel["targets"], where
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{where}: refIds must be unique"
        for target in panel["targets"]:
            assert isinstance(target.get("expr"), str) and target["expr"].strip(), where
            uid = target.get("datasource", panel["datasource"]).get("uid")
            assert uid == panel["datasource"]["uid"], where


def test_dashboard_panels_do_not_overlap() -> None:
    boxes = [(panel["id"], panel["gridPos"]) for panel in dashboard()["panels"]]
    for number, (first, a) in enumerate(boxes):
        for second, b in boxes[number + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"panels {first} and {second} overlap"


@pytest.mark.parametrize(("where", "expr"), targets(), ids=[where for where, _ in targets()])
def test_query_names_only_series_and_labels_the_code_declares(where: str, expr: str) -> None:
    assert promql_problems(expr, declared_series(), target_labels()) == []


def test_dashboard_shows_every_declared_metric() -> None:
    queried = " ".join(expr for _, expr in targets())
    named = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", queried))
    families: dict[str, set[str]] = {}
    for name in declared_series():
        family = re.sub(r"(_total|_bucket|_sum|_count)$", "", name)
        families.setdefault(family, set()).add(name)
    missing = sorted(family for family, names in families.items() if not names & named)
    assert missing == [], "add a panel for each new metric to the dashboard"


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(assistant_ingest_jobs_finished[5m])", "no such series"),
        ("assistant_ingest_queue_depth{queue_name='bulk'}", "has no label queue_name"),
        ("sum by (tenant) (assistant_ingest_queue_depth)", "has the label tenant"),
        ("histogram_quantil(0.5, assistant_ingest_job_latency_seconds_bucket)", "unknown function"),
        ('{__name__="assistant_ingest_queue_depth"}', "without a series name"),
        ("sum(rate(assistant_ingest_job_latency_seconds[5m]))", "no such series"),
    ],
)
def test_query_check_catches_what_does_not_exist(expr: str, problem: str) -> None:
    problems = promql_problems(expr, declared_series(), target_labels())
    assert any(problem in found for found in problems), problems


# --- provisioning and compose ----------------------------------------------------


def test_grafana_provisions_the_datasource_the_dashboard_uses() -> None:
    datasources = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    by_uid = {source["uid"]: source for source in datasources}
    used = {panel["datasource"]["uid"] for panel in dashboard()["panels"]}
    assert used <= set(by_uid)
    services = compose_services()
    for uid in used:
        assert by_uid[uid]["type"] == "prometheus"
        url = urlsplit(by_uid[uid]["url"])
        # Prometheus listens on 9090 unless its command moves it.
        assert url.hostname in services and url.port == 9090
        assert services[url.hostname]["image"].startswith("prom/prometheus")
        assert not any("--web.listen-address" in arg for arg in services[url.hostname]["command"])


def test_grafana_loads_the_dashboard_file_compose_mounts() -> None:
    grafana = compose_services()["grafana"]
    provisioning = container_to_host(grafana, "/etc/grafana/provisioning")
    assert provisioning == PROVISIONING.resolve(), "compose must mount the provisioning folder"
    providers = [
        provider
        for path in sorted((PROVISIONING / "dashboards").glob("*.y*ml"))
        for provider in load_yaml(path)["providers"]
    ]
    assert providers
    loaded = set()
    for provider in providers:
        assert provider["type"] == "file"
        folder = container_to_host(grafana, provider["options"]["path"])
        assert folder is not None, f"{provider['options']['path']} is not mounted"
        loaded |= {path.resolve() for path in folder.glob("*.json")}
    assert DASHBOARD.resolve() in loaded
    home = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert container_to_host(grafana, home) == DASHBOARD.resolve()


def test_prometheus_scrapes_the_edge_and_every_worker() -> None:
    services = compose_services()
    prometheus = services["prometheus"]
    config = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert container_to_host(prometheus, config.split("=", 1)[1]) == PROMETHEUS.resolve()
    scraped = set()
    for job in load_yaml(PROMETHEUS)["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for sd in job.get("dns_sd_configs", []):
            scraped |= {(name, sd["port"], path) for name in sd["names"]}
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                scraped.add((host, int(port), path))
    wanted = set()
    for name, service in services.items():
        command = service.get("command")
        if name == "api" or (
            isinstance(command, list) and command[:2] == ["assistant-ingest", "worker"]
        ):
            port = environment(service).get("METRICS_PORT", "0")
            assert port != "0", f"{name} serves no metrics"
            wanted.add((name, int(port), "/metrics"))
    assert len(wanted) > 3
    assert wanted <= scraped


def test_the_edge_publishes_its_api_port_and_not_its_metrics_port() -> None:
    api = compose_services()["api"]
    metrics_port = environment(api).get("METRICS_PORT", "0")
    assert metrics_port != "0", "the edge would serve /metrics on its public API port"
    published = [str(port).rsplit(":", 1)[-1] for port in api.get("ports", [])]
    assert published == ["8000"]
    assert metrics_port not in published


def test_flower_is_opt_in_and_does_not_restart_for_ever() -> None:
    flower = compose_services()["flower"]
    assert flower.get("profiles") == ["flower"]
    assert flower["restart"].startswith("on-failure:")
    assert "FLOWER_BASIC_AUTH:?" in " ".join(flower["command"])


def test_monitoring_ports_are_published_on_loopback_only() -> None:
    services = compose_services()
    for name in ("flower", "prometheus", "grafana"):
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
