"""The bodies of the vision endpoints: images from a multipart form's ``file`` parts or a JSON body's
``image`` (a data URL or base64), and the request's other fields."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import SerializationException

from pipelines.vision import decode_base64_image
from services.gateway.media_schemas import MAX_IMAGES, ClassificationRequest, ImageEmbeddingRequest
from shared_engine.errors import InvalidRequest, about_item

_Body = TypeVar("_Body", ClassificationRequest, ImageEmbeddingRequest)


def _convert(schema: type[_Body], fields: dict[str, Any], strict: bool) -> _Body:
    try:
        return msgspec.convert(fields, schema, strict=strict)
    except msgspec.ValidationError as exc:
        # msgspec says "Expected `int`, got `str` - at `$.top_k`": lead with the field, as for other bodies.
        message, _, where = str(exc).partition(" - at `$.")
        param = re.match(r"[A-Za-z_]+", where) or re.search(r"field `([A-Za-z_]+)`", message)
        name = param.group(param.lastindex or 0) if param else None
        raise InvalidRequest(f"{name}: {message}" if name else message, param=name) from None


async def image_request(request: Request[Any, Any, Any], schema: type[_Body]) -> tuple[list[bytes], _Body]:
    """The images of a multipart form (``file`` parts) or a JSON body (``image``), and the body's fields."""
    if request.content_type[0] == RequestEncodingType.MULTI_PART:
        form = await request.form()
        files = form.getall("file") if "file" in form else []
        if not files or not all(isinstance(f, UploadFile) for f in files):
            raise InvalidRequest("send the image as a multipart file field named `file`", param="file")
        if len(files) > MAX_IMAGES:
            raise InvalidRequest(f"at most {MAX_IMAGES} images per request, got {len(files)}", param="file")
        fields = {k: v for k, v in form.items() if k != "file"}
        body = _convert(schema, {**fields, "image": ""}, strict=False)  # form values are strings
        return [await f.read() for f in files], body
    try:
        raw = await request.json()
    except SerializationException:
        kind = request.content_type[0]
        if kind.startswith(("image/", "application/octet-stream")):  # the image itself as the body
            raise InvalidRequest(
                "send the image as a multipart form's `file` or a JSON body's `image`, "
                f"not as the body itself ({kind})",
                param="image",
            ) from None
        raise InvalidRequest(_not_json(await request.body()), param=None) from None
    if not isinstance(raw, dict):
        raise InvalidRequest("the body must be a JSON object or a multipart form", param=None)
    body = _convert(schema, raw, strict=True)
    images: Any = body.image
    if not isinstance(images, list):
        return [decode_base64_image(images)], body
    decoded = []
    for index, image in enumerate(images):
        try:
            decoded.append(decode_base64_image(image))
        except InvalidRequest as exc:
            raise about_item(exc, f"image {index}") from None
    return decoded, body


def _not_json(body: bytes) -> str:
    """Why a body failed to decode as JSON: its bytes (msgspec reports bad UTF-8 as bad JSON) or its text."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"The request body is not valid UTF-8 ({exc.reason})."
    return "the body is not valid JSON"
