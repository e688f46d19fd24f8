"""Image classification and image embeddings: EfficientNet-Lite on the engine's micro-batcher."""

from pipelines.vision.images import ImageTooLarge, decode_base64_image, load_image, to_rgb
from pipelines.vision.pipeline import Label, VisionOutput, VisionPipeline, VisionPipelineConfig
from pipelines.vision.preprocess import ImageTransform

__all__ = [
    "ImageTooLarge",
    "ImageTransform",
    "Label",
    "VisionOutput",
    "VisionPipeline",
    "VisionPipelineConfig",
    "decode_base64_image",
    "load_image",
    "to_rgb",
]
