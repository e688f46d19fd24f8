"""A Piper (VITS) voice: the ``.onnx`` model and its ``.onnx.json`` config, run with onnxruntime."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from pipelines.tts.phonemize import phonemize

logger = logging.getLogger(__name__)

BOS, EOS, PAD = "^", "$", "_"


@dataclass(frozen=True)
class VoiceConfig:
    """What a Piper voice's ``.onnx.json`` says about running it."""

    name: str
    sample_rate: int
    espeak_voice: str
    phoneme_id_map: dict[str, list[int]]
    num_speakers: int
    speaker_id_map: dict[str, int]
    noise_scale: float
    length_scale: float
    noise_w: float

    @classmethod
    def read(cls, path: Path) -> VoiceConfig:
        """Parse ``NAME.onnx.json``; the voice is called by its dataset, else by ``NAME``."""
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if data.get("phoneme_type", "espeak") != "espeak":
            raise ValueError(f"{path}: phoneme_type {data['phoneme_type']!r} is not supported (only espeak)")
        inference = data.get("inference", {})
        return cls(
            name=str(data.get("dataset") or path.name.removesuffix(".onnx.json")),
            sample_rate=int(data["audio"]["sample_rate"]),
            espeak_voice=str(data["espeak"]["voice"]),
            phoneme_id_map={str(k): [int(i) for i in v] for k, v in data["phoneme_id_map"].items()},
            num_speakers=int(data.get("num_speakers", 1)),
            speaker_id_map={str(k): int(v) for k, v in data.get("speaker_id_map", {}).items()},
            noise_scale=float(inference.get("noise_scale", 0.667)),
            length_scale=float(inference.get("length_scale", 1.0)),
            noise_w=float(inference.get("noise_w", 0.8)),
        )


def voice_files(path: Path) -> tuple[Path, Path]:
    """The ``(model, config)`` pair named by ``path``: a ``.onnx`` file (its config beside it as
    ``.onnx.json``) or a folder holding exactly one ``.onnx`` model."""
    if path.is_dir():
        models = sorted(path.glob("*.onnx"))
        if len(models) != 1:
            raise ValueError(f"{path} should hold exactly one .onnx voice, found {[m.name for m in models]}")
        path = models[0]
    config = path.with_name(path.name + ".json")
    if path.suffix != ".onnx" or not config.is_file():
        raise ValueError(f"{path} is not a Piper voice (want NAME.onnx with NAME.onnx.json beside it)")
    return path, config


def providers_for(device: str) -> list[Any]:
    """onnxruntime execution providers for a ``"cpu"``/``"cuda[:N]"`` device: CUDA when the runtime
    has it, else CPU."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
        logger.warning("device %s asked for, but this onnxruntime has no CUDA provider: using CPU", device)
    return ["CPUExecutionProvider"]


def _onnx_subset() -> Any:
    """Just enough of onnx.proto (model → graph → nodes, outputs) to add a graph output; every other
    field stays as unparsed bytes and is written back unchanged."""
    field = descriptor_pb2.FieldDescriptorProto
    one, many = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    text, message = field.TYPE_STRING, field.TYPE_MESSAGE
    schema = {
        "Model": [("graph", 7, message, one, "Graph")],
        "Graph": [("node", 1, message, many, "Node"), ("output", 12, message, many, "ValueInfo")],
        "Node": [("output", 2, text, many, ""), ("op_type", 4, text, one, "")],
        "ValueInfo": [("name", 1, text, one, "")],
    }
    file = descriptor_pb2.FileDescriptorProto(
        name="onnx_subset.proto", package="onnx_subset", syntax="proto2"
    )
    for name, fields in schema.items():
        spec = file.message_type.add(name=name)
        for fname, number, kind, label, type_name in fields:
            added = spec.field.add(name=fname, number=number, type=kind, label=label)
            if type_name:
                added.type_name = f".onnx_subset.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("onnx_subset.Model"))


def expose_durations(model: bytes) -> tuple[bytes, str] | None:
    """``model`` with VITS's rounded phoneme durations (the only ``Ceil``: ``w_ceil`` [B, 1, T], in
    frames) added as a graph output, and that output's name; None if the graph is not shaped that way."""
    try:
        parsed = _onnx_subset().FromString(model)
    except DecodeError:
        return None  # not an ONNX model: let onnxruntime say so
    ceils = [node for node in parsed.graph.node if node.op_type == "Ceil"]
    if len(ceils) != 1 or len(ceils[0].output) != 1:
        return None
    name = str(ceils[0].output[0])
    parsed.graph.output.add(name=name)
    return parsed.SerializeToString(), name


class PiperVoice:
    """One Piper voice in an onnxruntime session. Batches of padded id sequences run in one forward
    when the rounded durations can be read out of the graph (each item's true length in frames);
    otherwise items run one at a time."""

    def __init__(self, path: Path, device: str = "cpu", intra_op_threads: int = 0) -> None:
        self.model_path, config_path = voice_files(path)
        self.config = VoiceConfig.read(config_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        model = self.model_path.read_bytes()
        exposed = expose_durations(model)
        self.durations_output = exposed[1] if exposed else None
        self.session = ort.InferenceSession(
            exposed[0] if exposed else model, options, providers=providers_for(device)
        )
        self.audio_output = self.session.get_outputs()[0].name
        self.has_speaker_input = any(i.name == "sid" for i in self.session.get_inputs())
        self.hop_length = self._probe_hop_length()
        logger.info(
            "Piper voice %s loaded from %s (%s, batching %s)",
            self.name,
            self.model_path,
            self.session.get_providers()[0],
            "on" if self.supports_batching else "off",
        )

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def on_gpu(self) -> bool:
        return self.session.get_providers()[0] == "CUDAExecutionProvider"

    @property
    def supports_batching(self) -> bool:
        return self.durations_output is not None and self.hop_length > 0

    @property
    def speakers(self) -> dict[str, int]:
        """Speaker name → id: the voice's own name for a one-speaker voice."""
        if self.config.num_speakers <= 1:
            return {self.name: 0}
        if self.config.speaker_id_map:
            return dict(self.config.speaker_id_map)
        return {f"{self.name}-{i}": i for i in range(self.config.num_speakers)}

    def phonemize(self, text: str) -> list[str]:
        """Phonemes of ``text``, one string per sentence, with this voice's espeak-ng language."""
        return phonemize(text, self.config.espeak_voice)

    def phoneme_ids(self, phonemes: Iterable[str]) -> list[int]:
        """Piper's ids: ``^``, then each known phoneme followed by the pad ``_``, then ``$``."""
        id_map = self.config.phoneme_id_map
        pad = id_map[PAD]
        ids = [*id_map[BOS], *pad]
        for phoneme in phonemes:
            mapped = id_map.get(phoneme)
            if mapped is not None:
                ids += [*mapped, *pad]
        return ids + id_map[EOS]

    def synthesize_ids(
        self,
        batch: Sequence[Sequence[int]],
        length_scale: float,
        noise_scale: float,
        noise_w: float,
        speaker_ids: Sequence[int] | None = None,
    ) -> list[np.ndarray]:
        """Raw float32 audio of each id sequence in ``batch`` (one forward when the voice batches)."""
        if len(batch) > 1 and not self.supports_batching:
            return [
                self.synthesize_ids([ids], length_scale, noise_scale, noise_w, [sid])[0]
                for ids, sid in zip(batch, speaker_ids or [0] * len(batch), strict=True)
            ]
        feeds = self._feeds(batch, (noise_scale, length_scale, noise_w), speaker_ids)
        names = [self.audio_output] + ([self.durations_output] if self.durations_output else [])
        outputs = self.session.run(names, feeds)
        audio = np.asarray(outputs[0], dtype=np.float32).reshape(len(batch), -1)
        if not self.supports_batching:
            return [audio[0]]
        frames = np.maximum(1, np.asarray(outputs[1]).reshape(len(batch), -1).sum(axis=1))
        lengths = np.minimum(frames.astype(np.int64) * self.hop_length, audio.shape[1])
        return [audio[i, :n].copy() for i, n in enumerate(lengths.tolist())]

    def _feeds(
        self,
        batch: Sequence[Sequence[int]],
        scales: tuple[float, float, float],
        speaker_ids: Sequence[int] | None,
    ) -> dict[str, np.ndarray]:
        width = max(len(ids) for ids in batch)
        tokens = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            tokens[row, : len(ids)] = ids
        feeds: dict[str, np.ndarray] = {
            "input": tokens,
            "input_lengths": np.array([len(ids) for ids in batch], dtype=np.int64),
            "scales": np.array(scales, dtype=np.float32),
        }
        if self.has_speaker_input:
            feeds["sid"] = np.array(speaker_ids or [0] * len(batch), dtype=np.int64)
        return feeds

    def _probe_hop_length(self) -> int:
        """Samples per frame, from one short forward (which also warms the session up); 0 when the
        duration output does not account for the audio, which turns batching off."""
        if self.durations_output is None:
            return 0
        ids = self.phoneme_ids("a")
        outputs = self.session.run(
            [self.audio_output, self.durations_output], self._feeds([ids], (0.0, 1.0, 0.0), None)
        )
        samples = int(np.asarray(outputs[0]).shape[-1])
        frames = max(1, int(np.asarray(outputs[1]).sum()))
        if samples % frames:
            logger.warning("%s: %d samples for %d frames; batching off", self.model_path, samples, frames)
            self.durations_output = None
            return 0
        return samples // frames
