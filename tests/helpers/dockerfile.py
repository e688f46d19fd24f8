"""The Dockerfile read stage by stage: instructions with continuation lines joined and heredocs kept whole,
ARG defaults, and the stages a build of the last one runs. Shared by tests/test_compose.py and
tests/test_kubernetes.py."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DOCKERFILE = ROOT / "Dockerfile"


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
