"""The container engine as deploy/compose_smoke.py drives it: a docker CLI that builds with BuildKit, and
Compose v2 (`docker compose`) or, where that plugin is missing, docker-compose v1.

Compose v1 (1.29) rejects compose.yaml's top-level `name:` key, so it is given the file on stdin without
that line, with the project directory and name set on the command line (what `name:` would have set).
Standard library only, like the smoke script.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


class EngineError(RuntimeError):
    """No usable docker CLI or Compose, or a docker command that failed."""


def _run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


def _client_major(cli: str) -> int | None:
    answer = _run([cli, "version", "--format", "{{.Client.Version}}"])
    match = re.match(r"(\d+)\.", answer.stdout.strip())
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Engine:
    docker: str  # the docker CLI: builds, inspects and execs
    build_env: dict[str, str]  # added to the environment of `docker build`
    compose: tuple[str, ...]  # `docker compose` or `docker-compose`
    compose_v1: bool

    @classmethod
    def detect(cls) -> Engine:
        """A CLI with buildx (any current Docker), else one from before Docker 23, whose `build` still
        runs BuildKit itself with DOCKER_BUILDKIT=1 (Debian's docker.io 20.10, at /usr/bin/docker)."""
        candidates = list(dict.fromkeys(p for p in (shutil.which("docker"), "/usr/bin/docker") if p))
        candidates = [c for c in candidates if os.access(c, os.X_OK)]
        docker, env = None, {}
        for cli in candidates:
            if _run([cli, "buildx", "version"]).returncode == 0:
                docker = cli
                break
        if docker is None:
            older = [c for c in candidates if (_client_major(c) or 99) < 23]
            if not older:
                raise EngineError(f"no docker CLI with buildx or from before Docker 23 among {candidates}")
            docker, env = older[0], {"DOCKER_BUILDKIT": "1"}
        if _run([docker, "compose", "version"]).returncode == 0:
            return cls(docker, env, (docker, "compose"), compose_v1=False)
        legacy = shutil.which("docker-compose")
        if legacy is None:
            raise EngineError("neither `docker compose` nor `docker-compose` is installed")
        version = _run([legacy, "version", "--short"]).stdout.strip()
        return cls(docker, env, (legacy,), compose_v1=version.startswith("1."))

    def describe(self) -> str:
        server = _run([self.docker, "version", "--format", "{{.Server.Version}}"]).stdout.strip()
        compose = _run([*self.compose, "version", "--short"]).stdout.strip()
        build = " with DOCKER_BUILDKIT=1" if self.build_env else " (buildx)"
        return f"docker {server} via {self.docker}{build}; {' '.join(self.compose)} {compose}"


@dataclass(frozen=True)
class Container:
    id: str
    service: str
    status: str  # created, running, restarting, exited, ...
    health: str | None  # starting, healthy, unhealthy; None without a healthcheck
    exit_code: int

    def summary(self) -> str:
        if self.status == "exited":
            return f"exited({self.exit_code})"
        return self.health or self.status


@dataclass
class Compose:
    engine: Engine
    project: str
    file: Path = COMPOSE_FILE
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, *args: str) -> tuple[list[str], str | None]:
        """The command line and, for Compose v1, the compose file it reads on stdin."""
        if not self.engine.compose_v1:
            return [*self.engine.compose, "-p", self.project, "-f", str(self.file), *args], None
        text = re.sub(r"(?m)^name:.*\n", "", self.file.read_text())
        base = [*self.engine.compose, "-p", self.project, "--project-directory", str(self.file.parent)]
        return [*base, "-f", "-", *args], text

    def run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        argv, stdin = self.argv(*args)
        env = {**os.environ, **self.env}
        return _run(argv, input=stdin, timeout=timeout, env=env, cwd=self.file.parent)

    def start(self, *args: str, log: Path) -> subprocess.Popen[str]:
        """A compose command in the background, its output into `log` (for `up`, which blocks while it
        waits on health conditions)."""
        argv, stdin = self.argv(*args)
        out = log.open("a")
        process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **self.env}, cwd=self.file.parent,
        )  # fmt: skip
        assert process.stdin is not None
        process.stdin.write(stdin or "")
        process.stdin.close()
        return process

    def containers(self) -> list[Container]:
        """Every container of the project, running or not."""
        listed = _run([self.engine.docker, "ps", "-aq", "--filter", f"label={PROJECT_LABEL}={self.project}"])
        ids = listed.stdout.split()
        if not ids:
            return []
        inspected = _run([self.engine.docker, "inspect", *ids])
        if inspected.returncode != 0:  # a container removed between the two calls: ask again next time
            return []
        found = []
        for item in json.loads(inspected.stdout):
            state = item["State"]
            found.append(
                Container(
                    id=item["Id"][:12],
                    service=item["Config"]["Labels"].get(SERVICE_LABEL, "?"),
                    status=state["Status"],
                    health=(state.get("Health") or {}).get("Status"),
                    exit_code=int(state.get("ExitCode", 0)),
                )
            )
        return sorted(found, key=lambda c: (c.service, c.id))

    def exec(self, container: Container, *argv: str, timeout: float = 60) -> str:
        answer = _run([self.engine.docker, "exec", container.id, *argv], timeout=timeout)
        if answer.returncode != 0:
            raise EngineError(f"docker exec {container.service} ({container.id}): {answer.stderr.strip()}")
        return answer.stdout
