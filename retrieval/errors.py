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


class ObjectNotFound(EngineError):
    """An OpenAI-style object (file, vector store, …) that does not exist: 404 with ``code``."""

    what = "object"
    code = "not_found"

    def __init__(self, object_id: str, where: str | None = None) -> None:
        super().__init__(f"No such {self.what}: {object_id}" + (f" in {where}" if where else ""))
        self.object_id = object_id


class FileNotFound(ObjectNotFound):
    what, code = "file", "file_not_found"


class VectorStoreNotFound(ObjectNotFound):
    what, code = "vector store", "vector_store_not_found"


class VectorStoreExpired(InvalidRequest):
    """A vector store past its expires_after: its status says expired, and it is no longer searched."""

    code = "vector_store_expired"

    def __init__(self, store_id: str, expired_at: int) -> None:
        super().__init__(
            f"vector store {store_id} expired at {expired_at} (its expires_after: that many days without "
            "use); give it a new expires_after, or create it again, to search it"
        )


class VectorStoreFileNotFound(ObjectNotFound):
    what, code = "vector store file", "vector_store_file_not_found"


class FileBatchNotFound(ObjectNotFound):
    what, code = "vector store file batch", "file_batch_not_found"


class CollectionExists(EngineError):
    def __init__(self, name: str) -> None:
        super().__init__(f"collection `{name}` already exists")


class InvalidName(InvalidRequest):
    pass


class UnsupportedFormat(InvalidRequest):
    """A file whose type text cannot be extracted from (told by its name's suffix or content type)."""

    code = "unsupported_file"


class UnreadableDocument(InvalidRequest):
    """A file of a supported type that is broken, encrypted, or holds no text."""

    code = "invalid_file"


class CollectionOwned(InvalidRequest):
    """A collection that another API keeps as part of its objects (a vector store's): only that API may
    change or drop it."""

    code = "collection_owned"

    def __init__(self, name: str, owner: str, api: str) -> None:
        super().__init__(
            f"collection `{name}` belongs to {owner} `{name}`: change or delete it through {api}",
            param="name",
        )
