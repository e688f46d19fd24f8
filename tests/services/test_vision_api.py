"""The vision endpoints and collections of images of a real ``services.commands.serve`` process, with the real
EfficientNet-Lite0 model and real photographs (scikit-image's sample pictures): classification through
multipart and JSON in every accepted image format, image embeddings, image similarity search in a
collection, every 4xx in OpenAI's error shape (the server answering normally after each), and
concurrent requests."""

from __future__ import annotations

import base64
import io
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data as samples

from tests.helpers.api import error_of
from tests.services.conftest import DEFAULT_MODEL as CHAT_MODEL

MODEL = "efficientnet-lite0"  # models.toml
TEXT_MODEL = "all-minilm-l6-v2"
DIMENSIONS = 1280
CLASSES = 1000
MAX_PIXELS = 40_000_000  # MMSERVE_MAX_IMAGE_PIXELS' default
MAX_BODY_BYTES = 25 << 20  # MMSERVE_MAX_UPLOAD_MB's default
MAX_IMAGES = 64  # images per vision request (services/gateway/media_schemas.py)

CLASSIFY = "/v1/vision/classifications"
EMBED = "/v1/vision/embeddings"

# ImageNet-1k indices of the classes these photographs are about.
CATS = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat", 285: "Egyptian cat"}
COFFEE = {967: "espresso", 968: "cup", 504: "coffee mug"}
ROCKET = {657: "missile", 744: "projectile", 812: "space shuttle"}

MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}

# Distinct photographs for the embedding and search tests (colour, so JPEG keeps them as they are).
GALLERY = ("chelsea", "coffee", "rocket", "astronaut", "hubble_deep_field", "immunohistochemistry")


# -- images ------------------------------------------------------------------------------------------


@cache
def photo(name: str) -> Image.Image:
    """One of scikit-image's sample pictures as an 8-bit RGB image."""
    pixels = np.asarray(getattr(samples, name)())
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(pixels[..., :3]), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **options: Any) -> bytes:
    if fmt == "JPEG":
        options.setdefault("quality", 90)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@cache
def jpeg(name: str) -> bytes:
    return encode(photo(name))


def near_copy(name: str) -> bytes:
    """The photograph with 5 % cut from every side, re-encoded as a low-quality JPEG."""
    image = photo(name)
    w, h = image.size
    return encode(image.crop((w // 20, h // 20, w - w // 20, h - h // 20)), quality=60)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def data_url(raw: bytes, media_type: str = "image/jpeg") -> str:
    return f"data:{media_type};base64,{b64(raw)}"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def one_bit_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A black 1-bit greyscale PNG of ``width`` x ``height``, built without holding its pixels: each
    row is one filter byte and width/8 zero bytes, which zlib shrinks about a thousandfold. ``rows``
    stores only that many rows of pixel data (the header still claims ``height``)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    stream = zlib.compressobj(9)
    pixels = b"".join(stream.compress(row) for _ in range(height if rows is None else rows)) + stream.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", pixels)
        + png_chunk(b"IEND", b"")
    )


def png_size(raw: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (Pillow itself refuses to open the largest bombs)."""
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


def animated_gif(first: Image.Image, second: Image.Image) -> bytes:
    frames = [first, second.resize(first.size)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    raw = buffer.getvalue()
    with Image.open(io.BytesIO(raw)) as check:
        assert getattr(check, "n_frames", 1) == 2
    return raw


# -- requests ----------------------------------------------------------------------------------------


def labels_of(response: httpx.Response) -> list[dict[str, Any]]:
    """The ``data`` of a classification, after checking the envelope and each label's shape."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "data", "object"}, body
    assert (body["model"], body["object"]) == (MODEL, "list")
    labels: list[dict[str, Any]] = body["data"]
    for item in labels:
        assert set(item) == {"label", "index", "score"}, item
        assert isinstance(item["label"], str) and item["label"]
        assert isinstance(item["index"], int) and 0 <= item["index"] < CLASSES
        assert isinstance(item["score"], float) and 0.0 < item["score"] <= 1.0
        known = {**CATS, **COFFEE, **ROCKET}.get(item["index"])
        assert known is None or known == item["label"], item
    scores = [item["score"] for item in labels]
    assert scores == sorted(scores, reverse=True)
    assert len({item["index"] for item in labels}) == len(labels)
    return labels


def classify_file(
    http: httpx.Client, raw: bytes, top_k: int | str = 5, filename: str = "photo.jpg", **fields: str
) -> httpx.Response:
    form = {"top_k": str(top_k), **fields}
    return http.post(CLASSIFY, files={"file": (filename, raw, "application/octet-stream")}, data=form)


def classify(http: httpx.Client, raw: bytes, top_k: int = 5) -> list[dict[str, Any]]:
    return labels_of(classify_file(http, raw, top_k))


def top1(http: httpx.Client, raw: bytes) -> str:
    label: str = classify(http, raw, 1)[0]["label"]
    return label


def vectors_of(response: httpx.Response, count: int, dimensions: int = DIMENSIONS) -> list[np.ndarray]:
    """The embeddings of an answer, in order, after checking the envelope, the usage and each vector."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"data", "model", "usage", "object"}, body
    assert (body["model"], body["object"]) == (MODEL, "list")
    assert body["usage"]["images"] == count, body["usage"]
    assert [item["index"] for item in body["data"]] == list(range(count))
    assert all(item["object"] == "embedding" for item in body["data"])
    out = []
    for item in body["data"]:
        raw = item["embedding"]
        vector = (
            np.frombuffer(base64.b64decode(raw), dtype="<f4")
            if isinstance(raw, str)
            else np.asarray(raw, dtype=np.float32)
        )
        assert vector.shape == (dimensions,) and np.isfinite(vector).all()
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
        out.append(vector)
    return out


def embed(http: httpx.Client, *images: bytes) -> list[np.ndarray]:
    response = http.post(EMBED, json={"image": [b64(raw) for raw in images]})
    return vectors_of(response, len(images))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)))


def assert_serving(http: httpx.Client) -> None:
    """The vision model still answers a normal request correctly."""
    assert classify(http, jpeg("coffee"), 1)[0]["label"] == "espresso"


@pytest.fixture(scope="module")
def vision(http: httpx.Client) -> httpx.Client:
    """The session server's client, once /v1/models lists the vision model."""
    response = http.get("/v1/models")
    assert response.status_code == 200, response.text
    tasks = {card["id"]: card.get("task") for card in response.json()["data"]}
    assert tasks.get(MODEL) == "vision", f"{MODEL} is not served: {tasks}"
    assert tasks.get(TEXT_MODEL) == "embedding", tasks
    return http


# -- classification ----------------------------------------------------------------------------------


def test_classifies_cat_from_multipart_jpeg(vision: httpx.Client) -> None:
    labels = classify(vision, jpeg("chelsea"), 3)
    assert len(labels) == 3
    assert {item["index"] for item in labels} & set(CATS), labels
    assert labels[0]["index"] in CATS, labels


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(lambda raw: data_url(raw), id="data-url"),
        pytest.param(
            lambda raw: data_url(raw).replace("data:image/jpeg", "data:image/JPEG"), id="data-url-case"
        ),
        pytest.param(b64, id="base64"),
        pytest.param(lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("="), id="urlsafe-unpadded"),
        pytest.param(
            lambda raw: "\n".join(b64(raw)[i : i + 76] for i in range(0, len(b64(raw)), 76)), id="wrapped"
        ),
    ],
)
def test_classifies_cat_from_json(vision: httpx.Client, image: Callable[[bytes], str]) -> None:
    """A data URL or plain base64 gives exactly what the same bytes give as a multipart file."""
    raw = jpeg("chelsea")
    expected = classify(vision, raw, 3)
    labels = labels_of(vision.post(CLASSIFY, json={"image": image(raw), "model": MODEL, "top_k": 3}))
    assert [item["index"] for item in labels] == [item["index"] for item in expected]
    assert [item["score"] for item in labels] == pytest.approx([item["score"] for item in expected], abs=1e-5)
    assert labels[0]["index"] in CATS


def test_model_and_top_k_are_optional(vision: httpx.Client) -> None:
    labels = labels_of(vision.post(CLASSIFY, json={"image": b64(jpeg("chelsea"))}))
    assert len(labels) == 5 and labels[0]["index"] in CATS
    labels = labels_of(vision.post(CLASSIFY, files={"file": ("cat.jpg", jpeg("chelsea"), "image/jpeg")}))
    assert len(labels) == 5 and labels[0]["index"] in CATS


def test_classifies_coffee(vision: httpx.Client) -> None:
    labels = classify(vision, jpeg("coffee"), 3)
    assert {item["index"] for item in labels} & {967, 968}, labels
    assert labels[0]["label"] == "espresso"


def test_classifies_rocket(vision: httpx.Client) -> None:
    labels = classify(vision, jpeg("rocket"), 3)
    assert labels[0]["index"] in ROCKET, labels


@pytest.mark.parametrize("top_k", [1, 2, 7, 1000])
def test_top_k_is_respected(vision: httpx.Client, top_k: int) -> None:
    json_labels = labels_of(vision.post(CLASSIFY, json={"image": b64(jpeg("coffee")), "top_k": top_k}))
    form_labels = classify(vision, jpeg("coffee"), top_k)
    assert len(json_labels) == len(form_labels) == top_k
    assert [x["index"] for x in json_labels] == [x["index"] for x in form_labels]


def test_all_classes_form_a_distribution(vision: httpx.Client) -> None:
    labels = classify(vision, jpeg("chelsea"), CLASSES)
    assert sorted(item["index"] for item in labels) == list(range(CLASSES))
    assert len({item["label"] for item in labels}) == CLASSES
    assert sum(item["score"] for item in labels) == pytest.approx(1.0, abs=1e-6)
    short = classify(vision, jpeg("chelsea"), 5)
    assert [x["index"] for x in short] == [x["index"] for x in labels[:5]]


@pytest.mark.parametrize("name", ["chelsea", "coffee", "camera"])
@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("PNG", {}),
        ("WEBP", {"quality": 90}),
        ("GIF", {}),
    ],
)
def test_formats_give_the_same_top1(
    vision: httpx.Client, name: str, fmt: str, options: dict[str, Any]
) -> None:
    expected = top1(vision, jpeg(name))
    raw = encode(photo(name), fmt, **options)
    with Image.open(io.BytesIO(raw)) as check:
        assert check.format == fmt
    assert top1(vision, raw) == expected
    as_json = {"image": data_url(raw, MEDIA_TYPES[fmt]), "top_k": 1}
    assert labels_of(vision.post(CLASSIFY, json=as_json))[0]["label"] == expected


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda im: encode(im.convert("RGBA"), "PNG"), id="rgba-png"),
        pytest.param(lambda im: encode(im.convert("CMYK"), "JPEG"), id="cmyk-jpeg"),
        pytest.param(
            lambda im: encode(im.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), id="palette-png"
        ),
        pytest.param(lambda im: encode(im, "JPEG", progressive=True), id="progressive-jpeg"),
        pytest.param(lambda im: encode(im, "WEBP", lossless=True), id="lossless-webp"),
    ],
)
def test_other_pixel_layouts_of_the_cat(
    vision: httpx.Client, convert: Callable[[Image.Image], bytes]
) -> None:
    assert top1(vision, convert(photo("chelsea"))) == top1(vision, jpeg("chelsea"))


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda im: encode(im.convert("L"), "JPEG"), id="grey-jpeg"),
        pytest.param(
            lambda im: encode(Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257), "PNG"),
            id="16bit-png",
        ),
    ],
)
def test_greyscale_cat_is_still_a_cat(vision: httpx.Client, convert: Callable[[Image.Image], bytes]) -> None:
    assert classify(vision, convert(photo("chelsea")), 1)[0]["index"] in CATS


def test_animated_gif_is_classified_by_its_first_frame(vision: httpx.Client) -> None:
    cat, coffee = photo("chelsea"), photo("coffee")
    assert top1(vision, animated_gif(cat, coffee)) == top1(vision, encode(cat, "GIF"))
    assert classify(vision, animated_gif(cat, coffee), 1)[0]["index"] in CATS
    assert top1(vision, animated_gif(coffee, cat)) == "espresso"


def test_exif_orientation_is_applied(vision: httpx.Client) -> None:
    """A camera JPEG stored sideways with Orientation 6 ("rotate 90° clockwise to view") is seen upright."""
    upright = photo("chelsea")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = encode(sideways, quality=95, exif=exif.tobytes())
    reference, seen, untagged = embed(
        vision, encode(upright, quality=95), tagged, encode(sideways, quality=95)
    )
    assert cosine(reference, seen) > 0.99
    assert cosine(reference, untagged) < cosine(reference, seen) - 0.05


# -- embeddings --------------------------------------------------------------------------------------


def test_embedding_of_one_image(vision: httpx.Client) -> None:
    response = vision.post(EMBED, json={"image": data_url(jpeg("chelsea")), "model": MODEL})
    (vector,) = vectors_of(response, 1)
    assert response.json()["usage"] == {"images": 1, "prompt_tokens": 0, "total_tokens": 0}
    assert (vector >= 0).all()  # pooled activations after a ReLU6: never negative
    assert np.count_nonzero(vector) > DIMENSIONS // 4


def test_same_image_gives_the_same_embedding(vision: httpx.Client) -> None:
    first, second = embed(vision, jpeg("rocket"), jpeg("rocket"))
    (again,) = embed(vision, jpeg("rocket"))
    assert cosine(first, second) >= 0.999 and cosine(first, again) >= 0.999
    (png,) = embed(vision, encode(photo("rocket"), "PNG"))
    assert cosine(first, png) >= 0.97  # lossless vs quality-90 JPEG of the same pixels


def test_different_photos_are_far_apart(vision: httpx.Client) -> None:
    vectors = embed(vision, *(jpeg(name) for name in GALLERY))
    for i in range(len(GALLERY)):
        for j in range(i + 1, len(GALLERY)):
            assert cosine(vectors[i], vectors[j]) < 0.5, (GALLERY[i], GALLERY[j])


def test_near_copy_is_closest_to_its_original(vision: httpx.Client) -> None:
    originals = embed(vision, *(jpeg(name) for name in GALLERY))
    copies = embed(vision, *(near_copy(name) for name in GALLERY))
    for i, name in enumerate(GALLERY):
        sims = [cosine(copies[i], original) for original in originals]
        others = max(s for j, s in enumerate(sims) if j != i)
        assert sims[i] >= 0.8, (name, sims)
        assert sims[i] > others + 0.3, (name, sims)


def test_base64_encoding_matches_floats(vision: httpx.Client) -> None:
    images = [b64(jpeg("coffee")), b64(jpeg("chelsea"))]
    floats = vectors_of(vision.post(EMBED, json={"image": images, "encoding_format": "float"}), 2)
    response = vision.post(EMBED, json={"image": images, "encoding_format": "base64"})
    packed = vectors_of(response, 2)
    assert all(isinstance(item["embedding"], str) for item in response.json()["data"])
    for f, p in zip(floats, packed, strict=True):
        assert p.dtype == np.dtype("<f4") and np.array_equal(f, p)


@pytest.mark.parametrize("as_form", [False, True], ids=["json", "multipart"])
def test_dimensions_keep_the_first_components_renormalised(vision: httpx.Client, as_form: bool) -> None:
    """As /v1/embeddings takes it: the first d components of the vector, scaled back to unit length."""
    (full,) = embed(vision, jpeg("coffee"))
    if as_form:
        files = [("file", ("coffee.jpg", jpeg("coffee"), "image/jpeg"))]
        response = vision.post(EMBED, files=files, data={"dimensions": "8"})
    else:
        response = vision.post(EMBED, json={"image": b64(jpeg("coffee")), "dimensions": 8})
    (short,) = vectors_of(response, 1, dimensions=8)
    assert np.allclose(short, full[:8] / np.linalg.norm(full[:8]), atol=1e-6)


def test_list_of_images_keeps_its_order(vision: httpx.Client) -> None:
    names = ["coffee", "chelsea", "rocket"]
    batch = vectors_of(vision.post(EMBED, json={"image": [data_url(jpeg(n)) for n in names]}), 3)
    for name, vector in zip(names, batch, strict=True):
        (single,) = embed(vision, jpeg(name))
        assert cosine(vector, single) >= 0.999, name
    assert cosine(batch[0], batch[1]) < 0.5 and cosine(batch[1], batch[2]) < 0.5


def test_as_many_images_as_a_request_may_hold(vision: httpx.Client) -> None:
    tiny = [encode(photo(name).resize((48, 32)), "PNG") for name in ("coffee", "chelsea")]
    vectors = vectors_of(
        vision.post(EMBED, json={"image": [b64(tiny[i % 2]) for i in range(MAX_IMAGES)]}), MAX_IMAGES
    )
    assert all(cosine(v, vectors[i % 2]) >= 0.999 for i, v in enumerate(vectors))
    assert cosine(vectors[0], vectors[1]) < 0.9


def test_multipart_with_several_files(vision: httpx.Client) -> None:
    names = ["rocket", "coffee", "chelsea"]
    files = [("file", (f"{n}.png", encode(photo(n), "PNG"), "image/png")) for n in names]
    response = vision.post(EMBED, files=files, data={"model": MODEL, "encoding_format": "base64"})
    vectors = vectors_of(response, 3)
    expected = embed(vision, *(encode(photo(n), "PNG") for n in names))
    for name, got, want in zip(names, vectors, expected, strict=True):
        assert cosine(got, want) >= 0.999, name


# -- collections of images ---------------------------------------------------------------------------


@pytest.fixture
def names(vision: httpx.Client) -> Iterator[Callable[[str], str]]:
    """Unique collection names on the shared server; every collection named here is dropped afterwards."""
    made: list[str] = []

    def new(prefix: str) -> str:
        made.append(f"{prefix}-{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield new
    for name in made:
        vision.delete(f"/v1/collections/{name}")


def create_image_collection(http: httpx.Client, name: str, index: str = "flat") -> dict[str, Any]:
    response = http.post("/v1/collections", json={"name": name, "model": MODEL, "index": index})
    assert response.status_code == 201, response.text
    info: dict[str, Any] = response.json()
    assert (info["name"], info["model"], info["index"]) == (name, MODEL, index)
    assert (info["dimensions"], info["documents"], info["object"]) == (DIMENSIONS, 0, "collection")
    return info


GALLERY_META: dict[str, dict[str, Any]] = {
    "chelsea": {"subject": "cat", "animal": True, "year": 2020},
    "coffee": {"subject": "drink", "animal": False, "year": 2021},
    "rocket": {"subject": "space", "animal": False, "year": 2021},
    "astronaut": {"subject": "space", "animal": False, "year": 2020},
    "hubble_deep_field": {"subject": "space", "animal": False, "year": 2022},
    "immunohistochemistry": {"subject": "lab", "animal": False, "year": 2022},
}


def gallery_documents() -> list[dict[str, Any]]:
    """The gallery as documents: alternately PNG data URLs and plain-base64 JPEGs, each with a caption."""
    docs = []
    for i, name in enumerate(GALLERY):
        image = data_url(encode(photo(name), "PNG"), "image/png") if i % 2 == 0 else b64(jpeg(name))
        docs.append({"id": name, "image": image, "text": f"photo of {name}", "metadata": GALLERY_META[name]})
    return docs


def search(
    http: httpx.Client, collection: str, raw: bytes, top_k: int = 10, **extra: Any
) -> list[dict[str, Any]]:
    body = {"collection": collection, "image": b64(raw), "top_k": top_k, **extra}
    response = http.post("/v1/retrieval/query", json=body)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    return results


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_image_similarity_search(vision: httpx.Client, names: Callable[[str], str], index: str) -> None:
    name = names("vision-search")
    create_image_collection(vision, name, index)
    response = vision.post(f"/v1/collections/{name}/documents", json={"documents": gallery_documents()})
    assert response.status_code == 200, response.text
    assert response.json() == {"ids": list(GALLERY), "chunks": len(GALLERY)}
    assert vision.get(f"/v1/collections/{name}").json()["documents"] == len(GALLERY)
    doc = vision.get(f"/v1/collections/{name}/documents/coffee").json()
    meta = GALLERY_META["coffee"]
    assert doc == {"id": "coffee", "collection": name, "text": "photo of coffee", "metadata": meta,
                   "chunks": 1, "object": "document"}  # fmt: skip

    for target in ("chelsea", "coffee", "rocket", "hubble_deep_field"):
        results = search(vision, name, near_copy(target), top_k=3)
        assert len(results) == 3
        best = results[0]
        assert set(best) == {"document_id", "chunk_id", "text", "score", "metadata"}
        assert (best["document_id"], best["text"], best["metadata"]) == (
            target,
            f"photo of {target}",
            GALLERY_META[target],
        )
        assert best["score"] >= 0.8 and results[1]["score"] < best["score"] - 0.3, results
    assert len(search(vision, name, near_copy("coffee"), top_k=100)) == len(GALLERY)

    # metadata filters: the best match among what the filter lets through
    hits = search(vision, name, near_copy("chelsea"), filter={"animal": False})
    assert "chelsea" not in {h["document_id"] for h in hits} and len(hits) == len(GALLERY) - 1
    assert all(h["metadata"]["animal"] is False for h in hits)
    hits = search(vision, name, near_copy("rocket"), filter={"subject": "space", "year": 2021})
    assert [h["document_id"] for h in hits] == ["rocket"]
    hits = search(vision, name, near_copy("astronaut"), filter={"year": 2022})
    assert {h["document_id"] for h in hits} == {"hubble_deep_field", "immunohistochemistry"}
    assert search(vision, name, near_copy("coffee"), filter={"subject": "nothing"}) == []

    # deleting a document removes it from the answers
    response = vision.delete(f"/v1/collections/{name}/documents/coffee")
    assert response.status_code == 200 and response.json() == {
        "id": "coffee",
        "deleted": True,
        "object": "deleted",
    }
    error_of(vision.get(f"/v1/collections/{name}/documents/coffee"), 404)
    hits = search(vision, name, near_copy("coffee"))
    assert "coffee" not in {h["document_id"] for h in hits} and len(hits) == len(GALLERY) - 1
    assert hits[0]["score"] < 0.5
    assert search(vision, name, near_copy("chelsea"), top_k=1)[0]["document_id"] == "chelsea"

    # dropping the collection
    response = vision.delete(f"/v1/collections/{name}")
    assert response.status_code == 200 and response.json() == {
        "id": name,
        "deleted": True,
        "object": "deleted",
    }
    error = error_of(
        vision.post("/v1/retrieval/query", json={"collection": name, "image": b64(jpeg("coffee"))}), 404
    )
    assert error["code"] == "collection_not_found"
    assert name not in {c["name"] for c in vision.get("/v1/collections").json()["data"]}


def test_image_document_replaced_by_id(vision: httpx.Client, names: Callable[[str], str]) -> None:
    name = names("vision-replace")
    create_image_collection(vision, name)
    docs = [
        {"id": "pic", "image": b64(jpeg("chelsea")), "metadata": {"v": 1}},
        {"id": "other", "image": b64(jpeg("rocket"))},
    ]
    assert vision.post(f"/v1/collections/{name}/documents", json={"documents": docs}).status_code == 200
    replacement = [{"id": "pic", "image": b64(jpeg("coffee")), "text": "now coffee", "metadata": {"v": 2}}]
    assert (
        vision.post(f"/v1/collections/{name}/documents", json={"documents": replacement}).status_code == 200
    )
    hits = search(vision, name, near_copy("coffee"))
    assert [h["document_id"] for h in hits] == ["pic", "other"]
    assert (hits[0]["text"], hits[0]["metadata"]) == ("now coffee", {"v": 2}) and hits[0]["score"] >= 0.8
    assert search(vision, name, near_copy("chelsea"))[0]["score"] < 0.5  # the cat is gone


def test_a_bad_image_in_a_batch_stores_nothing(vision: httpx.Client, names: Callable[[str], str]) -> None:
    name = names("vision-atomic")
    create_image_collection(vision, name)
    docs = [{"id": "good", "image": b64(jpeg("coffee"))}, {"id": "bad", "image": b64(jpeg("rocket")[:2000])}]
    error = error_of(vision.post(f"/v1/collections/{name}/documents", json={"documents": docs}), 400)
    assert error["param"] == "image" and "truncated" in error["message"]
    assert vision.get(f"/v1/collections/{name}").json()["documents"] == 0
    error_of(vision.get(f"/v1/collections/{name}/documents/good"), 404)
    assert search(vision, name, jpeg("coffee")) == []


def test_image_and_text_collections_do_not_mix(vision: httpx.Client, names: Callable[[str], str]) -> None:
    images, texts = names("vision-mix-img"), names("vision-mix-txt")
    create_image_collection(vision, images)
    assert vision.post("/v1/collections", json={"name": texts, "model": TEXT_MODEL}).status_code == 201
    cat = b64(jpeg("chelsea"))
    add = {"documents": [{"id": "cat", "image": cat, "text": "a cat"}]}
    assert vision.post(f"/v1/collections/{images}/documents", json=add).status_code == 200

    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/retrieval/query", {"collection": images, "query": "a cat on a sofa"}, "image"),
        ("/v1/retrieval/query", {"collection": images}, "image"),
        ("/v1/retrieval/query", {"collection": texts, "image": cat}, "image"),
        (f"/v1/collections/{texts}/documents", add, "documents"),
        (
            f"/v1/collections/{images}/documents",
            {"documents": [{"id": "t", "text": "only text"}]},
            "documents",
        ),
        # RAG takes no image: the collection is what is wrong.
        (
            "/v1/rag",
            {"collection": images, "query": "what animal is this?", "model": CHAT_MODEL},
            "collection",
        ),
        ("/v1/retrieval/query", {"collection": images, "image": "not*base64"}, "image"),
        ("/v1/retrieval/query", {"collection": images, "image": b64(b"GIF89a but not really")}, "image"),
        (
            f"/v1/collections/{images}/documents",
            {"documents": [{"image": data_url(b"hi", "text/plain")}]},
            "image",
        ),
    ]
    for path, body, param in cases:
        error = error_of(vision.post(path, json=body), 400)
        assert error["param"] == param, (path, body, error)
    assert vision.get(f"/v1/collections/{images}").json()["documents"] == 1
    assert vision.get(f"/v1/collections/{texts}").json()["documents"] == 0
    assert [h["document_id"] for h in search(vision, images, near_copy("chelsea"))] == ["cat"]


def test_pixel_limit_applies_to_collections(vision: httpx.Client, names: Callable[[str], str]) -> None:
    name = names("vision-bomb")
    create_image_collection(vision, name)
    bomb = b64(one_bit_png(8000, 8000))
    for path, body in [
        (f"/v1/collections/{name}/documents", {"documents": [{"id": "bomb", "image": bomb}]}),
        ("/v1/retrieval/query", {"collection": name, "image": bomb}),
    ]:
        response = vision.post(path, json=body)
        error = error_of(response, 413)
        assert (error["type"], error["param"]) == ("request_too_large", "image"), error
        assert str(MAX_PIXELS) in error["message"], error
    assert vision.get(f"/v1/collections/{name}").json()["documents"] == 0


# -- bad input ---------------------------------------------------------------------------------------


def multipart(raw: bytes, filename: str = "upload.bin", **fields: str) -> dict[str, Any]:
    return {"files": {"file": (filename, raw, "application/octet-stream")}, "data": fields}


def bad_inputs() -> list[Any]:
    """(endpoint, request keyword arguments, status, param, a piece of the message)."""
    cat_jpeg, cat_png = jpeg("chelsea"), encode(photo("chelsea"), "PNG")
    cat = b64(cat_jpeg)
    cases: list[tuple[str, str, Callable[[], dict[str, Any]], int, str | None, str]] = [
        (
            "text-bytes",
            CLASSIFY,
            lambda: multipart(b"Hello, this is a text file.\n"),
            400,
            "image",
            "JPEG, PNG",
        ),
        ("empty-file", CLASSIFY, lambda: multipart(b""), 400, "image", "empty"),
        (
            "truncated-jpeg",
            CLASSIFY,
            lambda: multipart(cat_jpeg[: len(cat_jpeg) // 2]),
            400,
            "image",
            "truncated",
        ),
        ("jpeg-header-only", CLASSIFY, lambda: multipart(cat_jpeg[:400]), 400, "image", ""),
        (
            "truncated-png",
            CLASSIFY,
            lambda: multipart(cat_png[: len(cat_png) // 2]),
            400,
            "image",
            "truncated",
        ),
        ("png-signature-only", CLASSIFY, lambda: multipart(cat_png[:8]), 400, "image", ""),
        (
            "truncated-webp",
            CLASSIFY,
            lambda: multipart(encode(photo("chelsea"), "WEBP")[:500]),
            400,
            "image",
            "",
        ),
        ("bmp", CLASSIFY, lambda: multipart(encode(photo("chelsea"), "BMP")), 400, "image", "BMP"),
        ("tiff", EMBED, lambda: multipart(encode(photo("chelsea"), "TIFF")), 400, "image", "TIFF"),
        (
            "bad-base64",
            CLASSIFY,
            lambda: {"json": {"image": "this is *not* base64!"}},
            400,
            "image",
            "base64",
        ),
        ("base64-bad-length", CLASSIFY, lambda: {"json": {"image": "QUJDR"}}, 400, "image", "5 characters"),
        ("base64-of-text", EMBED, lambda: {"json": {"image": b64(b"just some words")}}, 400, "image", ""),
        ("empty-base64", CLASSIFY, lambda: {"json": {"image": ""}}, 400, "image", "empty"),
        (
            "data-url-text",
            CLASSIFY,
            lambda: {"json": {"image": data_url(b"hello", "text/plain")}},
            400,
            "image",
            "text/plain",
        ),
        (
            "data-url-pdf",
            EMBED,
            lambda: {"json": {"image": data_url(b"%PDF-1.4", "application/pdf")}},
            400,
            "image",
            "application/pdf",
        ),
        (
            "data-url-not-base64",
            CLASSIFY,
            lambda: {"json": {"image": "data:image/png,%89PNG"}},
            400,
            "image",
            "base64",
        ),
        (
            "data-url-no-comma",
            CLASSIFY,
            lambda: {"json": {"image": "data:image/png;base64"}},
            400,
            "image",
            "",
        ),
        ("top-k-0", CLASSIFY, lambda: {"json": {"image": cat, "top_k": 0}}, 400, "top_k", "top_k"),
        ("top-k-1001", CLASSIFY, lambda: {"json": {"image": cat, "top_k": 1001}}, 400, "top_k", "1000"),
        ("top-k-negative", CLASSIFY, lambda: {"json": {"image": cat, "top_k": -3}}, 400, "top_k", "top_k"),
        ("top-k-0-form", CLASSIFY, lambda: multipart(cat_jpeg, top_k="0"), 400, "top_k", "top_k"),
        ("top-k-1001-form", CLASSIFY, lambda: multipart(cat_jpeg, top_k="1001"), 400, "top_k", "top_k"),
        ("top-k-word", CLASSIFY, lambda: multipart(cat_jpeg, top_k="many"), 400, "top_k", "int"),
        ("top-k-null", CLASSIFY, lambda: {"json": {"image": cat, "top_k": None}}, 400, "top_k", "int"),
        ("no-image", CLASSIFY, lambda: {"json": {"model": MODEL, "top_k": 3}}, 400, "image", "image"),
        ("no-image-embed", EMBED, lambda: {"json": {"model": MODEL}}, 400, "image", "image"),
        ("image-null", CLASSIFY, lambda: {"json": {"image": None}}, 400, "image", ""),
        ("image-number", EMBED, lambda: {"json": {"image": 42}}, 400, "image", ""),
        ("image-object", CLASSIFY, lambda: {"json": {"image": {"url": "x"}}}, 400, "image", ""),
        ("list-to-classify", CLASSIFY, lambda: {"json": {"image": [cat, cat]}}, 400, "image", "str"),
        ("empty-list-to-classify", CLASSIFY, lambda: {"json": {"image": []}}, 400, "image", ""),
        (
            "two-files-to-classify",
            CLASSIFY,
            lambda: {"files": [("file", ("a.jpg", cat_jpeg)), ("file", ("b.jpg", cat_jpeg))]},
            400,
            "file",
            "one image",
        ),
        (
            "image-url",
            CLASSIFY,
            lambda: {"json": {"image": "https://example.com/cat.jpg"}},
            400,
            "image",
            "images are never fetched",
        ),
        (
            "dimensions-past-the-model",
            EMBED,
            lambda: {"json": {"image": cat, "dimensions": DIMENSIONS + 1}},
            400,
            "dimensions",
            f"at most {DIMENSIONS}",
        ),
        ("dimensions-zero", EMBED, lambda: {"json": {"image": cat, "dimensions": 0}}, 400, "dimensions", ""),
        ("empty-list", EMBED, lambda: {"json": {"image": []}}, 400, "image", ""),
        ("list-with-a-number", EMBED, lambda: {"json": {"image": [cat, 7]}}, 400, "image", ""),
        ("list-with-bad-image", EMBED, lambda: {"json": {"image": [cat, b64(b"nope")]}}, 400, "image", ""),
        ("json-array-body", CLASSIFY, lambda: {"json": [cat]}, 400, None, "JSON object"),
        (
            "image-as-the-body",
            CLASSIFY,
            lambda: {"content": cat_jpeg, "headers": {"content-type": "image/jpeg"}},
            400,
            "image",
            "not as the body itself (image/jpeg)",
        ),
        ("no-body", EMBED, lambda: {}, 400, None, ""),
        (
            "form-without-file",
            CLASSIFY,
            lambda: {"data": {"image": cat, "top_k": "3"}, "files": {"other": ("x", b"x")}},
            400,
            "file",
            "file",
        ),
        (
            "file-as-text-field",
            EMBED,
            lambda: {"data": {"file": cat}, "files": {"other": ("x", b"x")}},
            400,
            "file",
            "file",
        ),
        (
            "second-of-two-not-an-image",
            EMBED,
            lambda: {"json": {"image": [cat, base64.b64encode(b"not an image at all").decode()]}},
            400,
            "image",
            "image 1: image is not a readable",
        ),
        (
            "second-of-two-files-not-an-image",
            EMBED,
            lambda: {"files": [("file", ("a", cat_jpeg, "image/jpeg")), ("file", ("b", b"no", "image/gif"))]},
            400,
            "image",
            "image 1: image is not a readable",
        ),
        (
            "second-of-two-not-base64",
            EMBED,
            lambda: {"json": {"image": [cat, "%%%"]}},
            400,
            "image",
            "image 1: ",
        ),
        (
            "encoding-format",
            EMBED,
            lambda: {"json": {"image": cat, "encoding_format": "int8"}},
            400,
            "encoding_format",
            "int8",
        ),
        (
            "encoding-format-form",
            EMBED,
            lambda: multipart(cat_jpeg, encoding_format="hex"),
            400,
            "encoding_format",
            "hex",
        ),
    ]
    return [
        pytest.param(path, build, status, param, text, id=case)
        for case, path, build, status, param, text in cases
    ]


@pytest.mark.parametrize(("path", "build", "status", "param", "text"), bad_inputs())
def test_bad_input(
    vision: httpx.Client,
    path: str,
    build: Callable[[], dict[str, Any]],
    status: int,
    param: str | None,
    text: str,
) -> None:
    error = error_of(vision.post(path, **build()), status)
    assert error["type"] == "invalid_request_error" and error["code"] is None, error
    assert error["param"] == param, error
    assert text in error["message"], error
    assert_serving(vision)


@pytest.mark.parametrize("path", [CLASSIFY, EMBED])
@pytest.mark.parametrize("model", ["no-such-model", TEXT_MODEL, CHAT_MODEL, ""])
def test_unknown_or_wrong_task_model(vision: httpx.Client, path: str, model: str) -> None:
    cat = b64(jpeg("chelsea"))
    requests: list[dict[str, Any]] = [
        {"json": {"image": cat, "model": model}},
        multipart(jpeg("chelsea"), model=model),
    ]
    for request in requests:
        response = vision.post(path, **request)
        if model == "":  # an empty name means the default model, as when it is left out
            assert response.status_code == 200, response.text
            continue
        error = error_of(response, 404)
        assert (error["code"], error["param"]) == ("model_not_found", "model"), error
        assert model in error["message"] and "vision" in error["message"]
    assert_serving(vision)


@pytest.mark.parametrize("path", [CLASSIFY, EMBED])
@pytest.mark.parametrize(
    ("width", "height", "rows"),
    [
        (8000, 8000, None),  # 64 M pixels: past the server's limit, under Pillow's own
        (12000, 3334, None),  # 40,008,000 pixels: just past the limit
        (100_000, 100_000, 8),  # 10 G pixels: past Pillow's own bomb limit too (only 8 rows stored)
        (40_000_001, 1, None),  # a 1-pixel-high strip
    ],
)
def test_decompression_bomb(
    vision: httpx.Client, path: str, width: int, height: int, rows: int | None
) -> None:
    bomb = one_bit_png(width, height, rows)
    assert len(bomb) < 100_000 and png_size(bomb) == (width, height)
    requests: list[dict[str, Any]] = [
        multipart(bomb, "bomb.png"),
        {"json": {"image": data_url(bomb, "image/png")}},
    ]
    for request in requests:
        response = vision.post(path, **request)
        error = error_of(response, 413)
        assert (error["type"], error["param"], error["code"]) == ("request_too_large", "image", None), error
        assert str(MAX_PIXELS) in error["message"] and str(width * height) in error["message"], error
    assert_serving(vision)


def test_image_at_the_pixel_limit_is_accepted(vision: httpx.Client) -> None:
    """Exactly 40,000,000 pixels decode (a cheap black 1-bit PNG, 8000 x 5000)."""
    labels = classify(vision, one_bit_png(8000, 5000), 1)
    assert len(labels) == 1


@pytest.mark.parametrize("path", [CLASSIFY, EMBED])
def test_body_over_the_size_limit(vision: httpx.Client, path: str) -> None:
    """26 MiB of image bytes: a JPEG start padded out (the server must refuse it before reading it)."""
    big = jpeg("chelsea") + b"\x00" * (MAX_BODY_BYTES + (1 << 20))
    requests: list[dict[str, Any]] = [
        multipart(big, "huge.jpg"),
        {"json": {"image": b64(big[: MAX_BODY_BYTES * 3 // 4 + 4096])}},  # base64 just past 25 MiB
    ]
    for request in requests:
        error = error_of(vision.post(path, **request), 413)
        assert error["type"] == "request_too_large", error

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold for a streamed body too
        for _ in range(MAX_BODY_BYTES // (1 << 20) + 2):
            yield b" " * (1 << 20)

    response = vision.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert error_of(response, 413)["type"] == "request_too_large"
    assert_serving(vision)


def test_body_just_under_the_size_limit_is_read(vision: httpx.Client) -> None:
    """A real JPEG padded to just under 25 MiB (JPEG readers ignore what follows the end marker)."""
    raw = jpeg("coffee")
    padded = raw + b"\x00" * (MAX_BODY_BYTES - len(raw) - 4096)
    labels = labels_of(
        vision.post(CLASSIFY, files={"file": ("big.jpg", padded, "image/jpeg")}, data={"top_k": "1"})
    )
    assert labels[0]["label"] == "espresso"


# -- body validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CLASSIFY, EMBED])
def test_malformed_json_body(vision: httpx.Client, path: str) -> None:
    response = vision.post(path, content=b'{"image": "abc', headers={"content-type": "application/json"})
    try:
        error_of(response, 400)
    finally:
        assert_serving(vision)


@pytest.mark.parametrize("path", [CLASSIFY, EMBED])
@pytest.mark.parametrize("model", [["efficientnet-lite0"], {"name": "efficientnet-lite0"}])
def test_model_of_the_wrong_json_type(vision: httpx.Client, path: str, model: Any) -> None:
    response = vision.post(path, json={"image": b64(jpeg("chelsea")), "model": model})
    try:
        assert response.status_code in (400, 404), response.text
        assert error_of(response, response.status_code)["param"] == "model"
    finally:
        assert_serving(vision)


@pytest.mark.parametrize("as_form", [False, True], ids=["json", "multipart"])
def test_more_images_than_a_request_may_hold(vision: httpx.Client, as_form: bool) -> None:
    tiny = encode(photo("coffee").resize((48, 32)), "PNG")
    count = MAX_IMAGES + 1
    if as_form:
        response = vision.post(EMBED, files=[("file", (f"{i}.png", tiny, "image/png")) for i in range(count)])
    else:
        response = vision.post(EMBED, json={"image": [b64(tiny)] * count})
    assert response.status_code == 400, response.text[:300]  # not 65 vectors in the report
    error = error_of(response, 400)
    assert error["param"] == ("file" if as_form else "image") and str(MAX_IMAGES) in error["message"]


@pytest.mark.parametrize("top_k", [True, 2.5])
def test_top_k_must_be_an_integer(vision: httpx.Client, top_k: Any) -> None:
    error = error_of(vision.post(CLASSIFY, json={"image": b64(jpeg("coffee")), "top_k": top_k}), 400)
    assert error["param"] == "top_k"


# -- concurrency -------------------------------------------------------------------------------------


def test_concurrent_classifications(vision: httpx.Client) -> None:
    """16 different images at once (batched together by the server) get what each gets alone."""
    names = ["chelsea", "coffee", "rocket", "camera", "clock", "retina", "page", "logo"]
    images = [jpeg(n) for n in names] + [
        encode(photo(n).transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG") for n in names
    ]
    alone = [classify(vision, raw, 3) for raw in images]
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        together = list(pool.map(lambda raw: classify(vision, raw, 3), images))
    for i, (expected, got) in enumerate(zip(alone, together, strict=True)):
        assert got[0]["index"] == expected[0]["index"], i
        assert [x["score"] for x in got] == pytest.approx([x["score"] for x in expected], abs=1e-4), i
    for i in (0, len(names)):  # the cat, as taken and mirrored
        assert together[i][0]["index"] in CATS
    for i in (1, 1 + len(names)):
        assert together[i][0]["label"] == "espresso"
    assert together[2][0]["index"] in ROCKET
    assert_serving(vision)
