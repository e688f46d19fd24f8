"""Errors of the retrieval layer (HTTP and gRPC boundaries translate them)."""

from __future__ import annotations

from shared_engine.errors import EngineError, InvalidRequest


class CollectionNotFound(EngineError):
    def __init__(self, name: str) -> None:
        super().__init__(f"collection `{name}` does not exist")
        self.name = name


class DocumentNotFound(EngineError):
    def __init__(self, collection: str, doc_id: str) -> None:
        super().__init__(f"document `{doc_id}` does not exist in collection `{collection}`")


class CollectionExists(EngineError):
    def __init__(self, name: str) -> None:
        super().__init__(f"collection `{name}` already exists")


class InvalidName(InvalidRequest):
    pass
