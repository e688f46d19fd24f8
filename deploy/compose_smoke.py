"""compose.yaml proven on a real container engine, end to end (`make compose-smoke`):

  1. build the image (the Dockerfile, with BuildKit);
  2. `up` the plain project (no profile) and wait until prepare has exited 0 and every service is healthy;
  3. one request per modality through the gateway: chat, embeddings, vision classification, speech
     synthesis, transcription (of that speech), retrieval (create a collection, add documents, query);
  4. scale chat to 2 replicas: both healthy, and chat requests with distinct prompts answered by each
     (counted on the replicas' own metrics);
  5. stop one worker (tts by default): its task answers 503, every other task still 200;
  6. bring everything down (`down --volumes`), always, whatever failed before.

Each step prints PASS, FAIL or SKIP with its duration; the exit status is 1 if any step failed. Requests go
only to the gateway on 127.0.0.1. Works with Compose v2 (`docker compose`) and, where that is missing, with
docker-compose v1.29 and Docker 20.10 (deploy/compose_engine.py). The standard library is enough to run it.

    python3 deploy/compose_smoke.py [--skip-build] [--torch-index URL] [--stop tts] [--log-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from compose_engine import Compose, Container, Engine, EngineError
from smoke_http import Gateway
from smoke_runner import GATEWAY_PORT, Smoke, build, down, save_logs, up_until_ready
from smoke_tasks import (
    CALLS,
    SERVICE_TASK,
    Session,
    StepFailed,
    add_document,
    chat,
    check_chat,
    check_speech,
    create_collection,
    load_models,
)

# --------------------------------------------------------------------------------------------------
# Scaling chat, stopping a worker


def served(smoke: Smoke, container: Container) -> float:
    """Requests a chat replica has finished, from its own metrics port (inside the container)."""
    code = (
        "import urllib.request as u;"
        "t=u.urlopen('http://127.0.0.1:9100/metrics',timeout=10).read().decode();"
        "print(sum(float(l.split()[-1]) for l in t.splitlines()"
        " if l.startswith('mmserve:request_success_total')))"
    )
    return float(smoke.compose.exec(container, "python", "-c", code).strip())


def scale_chat(smoke: Smoke) -> str:
    states = up_until_ready(smoke, {"llm": 2}, "--scale", "llm=2")
    time.sleep(10)  # the gateway looks dns:///llm up again every 5 s
    replicas = [c for c in smoke.compose.containers() if c.service == "llm" and c.health == "healthy"]
    before = {c.id: served(smoke, c) for c in replicas}
    # Distinct system prompts: no replica holds any of them, so the cache-aware router sends each to the
    # least loaded replica, taking turns among equals.
    for i in range(4):
        check_chat(chat(smoke.session, system=f"Request {i} {uuid.uuid4().hex[:8]} of the smoke test."))
    counts = {c.id: served(smoke, c) - before[c.id] for c in replicas}
    detail = ", ".join(f"{cid}: {n:.0f}" for cid, n in counts.items())
    if len(replicas) != 2 or min(counts.values()) < 1:
        raise StepFailed(f"4 chats answered, but not by both replicas: {detail}")
    return f"2 healthy llm replicas; 4 chats answered, per replica {detail}; {states.split(':')[0]}"


def stop_worker(smoke: Smoke) -> str:
    service, s = smoke.args.stop, smoke.session
    task = SERVICE_TASK[service]
    answer = smoke.compose.run("stop", "-t", "30", service, timeout=120)
    if answer.returncode != 0:
        raise StepFailed(f"stop {service}: {answer.stderr.strip()}")
    start, call = time.monotonic(), CALLS[task][0]
    while (reply := call(s)).status != 503:
        if time.monotonic() - start > 120:
            raise StepFailed(f"{task} with {service} stopped: still {reply.describe()} after 120 s")
        time.sleep(2)
    message = reply.json().get("error", {}).get("message", "")[:80]
    lines = [f"{task} 503 {time.monotonic() - start:.1f} s after the stop ({message!r})"]
    failures = []
    for other, (request, check) in CALLS.items():
        if other == task:
            continue
        try:
            check(request(s))
            lines.append(f"{other} 200")
        except StepFailed as error:
            failures.append(f"{other}: {error}")
    if failures:
        raise StepFailed("; ".join(failures))
    return ", ".join(lines)


# --------------------------------------------------------------------------------------------------
# The run


def preflight(smoke: Smoke) -> str:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", GATEWAY_PORT)) == 0:
            raise StepFailed(f"127.0.0.1:{GATEWAY_PORT} is taken; compose.yaml publishes the gateway there")
    if smoke.compose.containers():
        raise StepFailed(f"project {smoke.compose.project!r} already has containers; `down` it first")
    return smoke.compose.engine.describe()


def modality_steps(smoke: Smoke) -> None:
    s = smoke.session

    def one(task: str) -> Callable[[], str]:
        request, check = CALLS[task]
        return lambda: str(check(request(s)))

    def speech() -> str:
        s.wav = check_speech(CALLS["tts"][0](s))
        return f"{len(s.wav)} bytes of WAV"

    smoke.step("models", lambda: load_models(s), fatal=True)
    smoke.step("chat", one("chat"))
    smoke.step("embeddings", one("embedding"))
    smoke.step("vision classify", one("vision"))
    smoke.step("speech synthesis", speech)
    smoke.step("transcription", one("asr"))
    smoke.step("retrieval: create collection", lambda: create_collection(s))
    smoke.step("retrieval: add document", lambda: add_document(s))
    smoke.step("retrieval: query", one("retrieval"))


def report(smoke: Smoke, started: datetime.datetime, total: float) -> int:
    failed = [o.name for o in smoke.outcomes if o.status == "FAIL"]
    print(f"\n=== compose smoke, {started:%Y-%m-%d %H:%M} UTC, {socket.gethostname()}, {total:.0f} s in all")
    for o in smoke.outcomes:
        print(f"  {o.status:4}  {o.seconds:7.1f} s  {o.name}")
    print(f"=== {'FAIL: ' + ', '.join(failed) if failed else 'PASS'} (logs: {smoke.log_dir})", flush=True)
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--project", default="mmserve-smoke", help="compose project name (its own volumes)")
    parser.add_argument("--skip-build", action="store_true", help="use the mmserve:latest already built")
    parser.add_argument("--torch-index", help="the build's TORCH_INDEX (default: the Dockerfile's)")
    parser.add_argument("--build-network", default="host", help="docker build --network; 'default' for none")
    # Only workers no other worker calls: with embedding stopped, retrieval would fail too.
    parser.add_argument("--stop", default="tts", choices=["tts", "asr", "vision"], help="the worker to stop")
    parser.add_argument("--build-timeout", type=float, default=7200.0)
    parser.add_argument("--ready-timeout", type=float, default=2400.0, help="seconds until all are healthy")
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--log-dir", type=Path, help="build and services' logs (default: a new temp folder)")
    return parser.parse_args(argv)


def run(smoke: Smoke) -> None:
    if not smoke.step("preflight", lambda: preflight(smoke), fatal=True):
        return
    if not smoke.args.skip_build:
        smoke.step("build image", lambda: build(smoke), fatal=True)
    try:
        smoke.step("compose up, all healthy", lambda: up_until_ready(smoke, {}), fatal=True)
        modality_steps(smoke)
        smoke.step("scale chat to 2 replicas", lambda: scale_chat(smoke))
        smoke.step(f"stop {smoke.args.stop}: 503 for it, 200 for the rest", lambda: stop_worker(smoke))
    finally:
        if any(o.status == "FAIL" for o in smoke.outcomes):
            save_logs(smoke)
        smoke.aborted = False
        smoke.step("compose down", lambda: down(smoke))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through the `finally` that brings it down
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="mmserve-compose-smoke-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    started, start = datetime.datetime.now(datetime.UTC), time.monotonic()
    print(f"compose smoke: project {args.project}, logs in {log_dir}", flush=True)
    try:
        engine = Engine.detect()
    except EngineError as error:
        print(f"[FAIL] container engine: {error}")
        return 1
    gateway = Gateway(f"http://127.0.0.1:{GATEWAY_PORT}", timeout=args.request_timeout)
    session = Session(gateway, collection=f"smoke-{uuid.uuid4().hex[:8]}")
    smoke = Smoke(args, Compose(engine, args.project), session, log_dir)
    try:
        run(smoke)
    finally:
        code = report(smoke, started, time.monotonic() - start)
    return code


if __name__ == "__main__":
    sys.exit(main())
