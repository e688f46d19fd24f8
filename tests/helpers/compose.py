"""compose.yaml as `docker compose` reads it: interpolated in an empty environment (every ``${VAR:-default}``
takes its default), with each service's command, environment, healthcheck, mounts and names at hand.
Shared by tests/test_compose.py and tests/test_kubernetes.py."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.commands.worker import DEFAULT_PORT

ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"

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


def load_project() -> Project:
    return Project(interpolated(yaml.safe_load(COMPOSE_FILE.read_text())))


def endpoint_host_port(address: str) -> tuple[str, int]:
    match = re.fullmatch(r"(?:dns:(?://[^/]*/)?)?(?P<host>[^:/]+):(?P<port>\d+)", address)
    assert match, f"address {address!r} is not [dns:///]host:port"
    return match["host"], int(match["port"])
