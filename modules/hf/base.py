"""What every transformers adapter shares: weights from its role's folder (``weights``), loaded
once on the pool's device in eval mode and, on CUDA, in half precision where the model allows it;
one batched forward under ``torch.inference_mode`` for all the calls the pool merged; a version
that hashes the role's files.

An adapter writes ``build`` (the model and its processor, from a folder or hub id) and ``run``
(one forward for a batch of argument dicts, one result or ModuleError per item). Importing this
file imports neither torch nor transformers: the pack is built, and versions are read, before any
model loads."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..base import Module, ModuleError
from ..values import ImageValue, Objects
from .weights import RoleWeights, WeightsError

# Smaller than this, no vision transformer here has anything to look at (they resize to 224–960).
MIN_SIDE = 8


class HfModule(Module):
    """A module over one transformers model. Subclasses set ``signature``, ``expected`` (the
    model families the role takes, for error messages) and ``code_version``."""

    batchable = True
    max_batch_size = 8
    supports_half = True
    code_version = "1"
    expected = "a transformers model"

    def __init__(self, weights: RoleWeights) -> None:
        self.weights = weights
        self.model: Any = None
        self.processor: Any = None
        self.dtype: Any = None
        self._version: str | None = None

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = f"{self.signature.version}.{self.code_version}+{self.weights.digest()}"
        return self._version

    @abstractmethod
    def build(self, source: Path | str, local_only: bool) -> tuple[Any, Any]:
        """The model and its processor from ``source`` (a folder, or a hub id when downloads are on)."""

    @abstractmethod
    def run(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        """One forward over the batch; one value, or a ModuleError, per item."""

    def load(self, device: str) -> None:
        import torch

        try:
            source = self.weights.check(self.expected)
        except WeightsError as e:
            raise WeightsError(f"{self.name}: {e}") from None
        model, processor = self.build(source, local_only=isinstance(source, Path))
        model.eval()
        self.dtype = torch.float32
        if device.startswith("cuda") and self.supports_half:
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            model = self.to_half(model, self.dtype)
        self.model = model.to(device)
        self.processor = processor
        self.device = device

    def to_half(self, model: Any, dtype: Any) -> Any:
        """``model`` in half precision ``dtype``; an adapter whose model keeps parts in float32 casts the rest."""
        return model.to(dtype)

    def parameter_count(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters())) if self.model is not None else 0

    def memory_bytes(self) -> int:
        """Bytes the weights take on their device (parameters and buffers)."""
        if self.model is None:
            return 0
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def expected_bytes(self) -> int:
        """The weights' size on ``self.device`` from the safetensors headers alone (dtypes and shapes;
        float32 halves on CUDA where the model allows it), so the pool can make room before loading.
        0 for a hub id or a missing folder: nothing to measure before downloading."""
        folder = self.weights.folder
        if folder is None or not folder.is_dir():
            return 0
        half = self.device.startswith("cuda") and self.supports_half
        return sum(safetensors_bytes(p, half) for p in sorted(folder.glob("*.safetensors")))

    def unload(self) -> None:
        """Drop the model; on CUDA hand its cached blocks back, so another process or model can use them."""
        device, self.model, self.processor = self.device, None, None
        release(device)

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        import torch

        if self.model is None:
            self.load(self.device)
        with torch.inference_mode():
            return self.run(batch)

    # -- helpers for build ----------------------------------------------------------------------

    def wrong_weights(self, source: Path | str, problem: str) -> WeightsError:
        """The error for weights that are there but are not what this module takes."""
        return WeightsError(f"{self.name}: role {self.weights.role!r}: {source} {problem}; expected {self.expected}")

    def load_family(self, source: Path | str, local_only: bool, families: Collection[str], model_cls: Any,
                    processor_cls: Any) -> tuple[Any, Any]:
        """The model and processor from ``source`` when its config is one of ``families``; anything
        else (another family, no model type, weights of another shape or none, no processor files) a
        WeightsError naming the role and what was expected, for /readyz rather than a traceback."""
        from safetensors import SafetensorError
        from transformers import AutoConfig

        try:
            kind = AutoConfig.from_pretrained(source, local_files_only=local_only).model_type
            if kind not in families:
                raise self.wrong_weights(source, f"holds a {kind!r} model")
            # Never a pickled checkpoint, even from a hub repo that also ships one.
            model = model_cls.from_pretrained(source, local_files_only=local_only, use_safetensors=True)
            processor = processor_cls.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            raise self.wrong_weights(source, f"could not be loaded ({type(e).__name__}: {e})") from None
        return model, processor

    def model_config(self, source: Path | str, local_only: bool) -> dict[str, Any]:
        """``config.json`` as a dict, read before any model is built: a folder of another family is
        reported as such instead of being loaded into a model of the wrong kind."""
        if isinstance(source, Path):
            import json

            try:
                doc = json.loads((source / "config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise self.wrong_weights(source, f"has an unreadable config.json ({e})") from None
            if not isinstance(doc, dict):
                raise self.wrong_weights(source, "has a config.json that is not an object")
            return doc
        from transformers import AutoConfig

        config: dict[str, Any] = AutoConfig.from_pretrained(source, local_files_only=local_only).to_dict()
        return config

    def pretrained(self, cls: Any, source: Path | str, local_only: bool) -> Any:
        """``cls.from_pretrained`` that refuses weights that leave parameters missing: transformers
        would fill them with random values and only log a warning, and the module would answer noise."""
        model, info = cls.from_pretrained(str(source), local_files_only=local_only, output_loading_info=True,
                                          use_safetensors=True)
        missing = sorted(info.get("missing_keys") or ())
        if missing:
            shown = ", ".join(missing[:3]) + (f", … ({len(missing)} in all)" if len(missing) > 3 else "")
            raise self.wrong_weights(source, f"does not hold every weight {cls.__name__} needs (missing {shown})")
        return model

    def processor_from(self, cls: Any, source: Path | str, local_only: bool) -> Any:
        """The model's processor (tokenizer and image preprocessing), or a WeightsError naming what lacks."""
        try:
            return cls.from_pretrained(str(source), local_files_only=local_only)
        except (OSError, ValueError, TypeError) as e:
            raise self.wrong_weights(source, f"has no usable processor files (the tokenizer and the preprocessor "
                                             f"config save_pretrained writes beside the model: {e})") from None

    # -- helpers for run ----------------------------------------------------------------------

    def to_device(self, inputs: Any) -> Any:
        """A processor's output on the model's device, floating tensors in the model's dtype."""
        out = {}
        for k, v in dict(inputs).items():
            if hasattr(v, "to"):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(self.dtype)
            out[k] = v
        return out


def release(device: str) -> None:
    """Free what dropped models held: collect their reference cycles now, then return CUDA's cached
    blocks, which torch would otherwise keep for itself after the tensors are gone."""
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors_bytes(path: Path, half: bool = False) -> int:
    """Bytes the tensors of one safetensors file take in memory, read from its header (no tensor is
    loaded); ``half``: float32/float64 counted as 2 bytes, as they will be once cast to half precision.
    An unreadable header counts the file's size: an estimate, never an error before loading."""
    import json
    import struct

    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        total = 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for d in entry["shape"]:
                numel *= int(d)
            size = _DTYPE_BYTES.get(entry["dtype"], 4)
            total += numel * (2 if half and entry["dtype"] in ("F32", "F64") else size)
        return total
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        return path.stat().st_size if path.is_file() else 0


def pil_of(args: dict[str, Any], module: str, name: str = "image") -> tuple[ImageValue, Image.Image]:
    """The ``name`` argument, checked, and its RGB picture."""
    image = args.get(name)
    if not isinstance(image, ImageValue):
        raise ModuleError(f"{module} needs an image for '{name}', got {type(image).__name__}")
    if min(image.width, image.height) < MIN_SIDE:
        raise ModuleError(f"{module} needs an image at least {MIN_SIDE}×{MIN_SIDE} pixels, "
                          f"got {image.width}×{image.height}")
    pic = image.image if image.image.mode == "RGB" else image.image.convert("RGB")
    return image, pic


def objects_arg(op: str, args: dict[str, Any], image: ImageValue) -> Objects:
    """The 'object' argument, checked to be objects found on ``image`` (or an edit of it that moves
    no pixel), so their boxes and masks fall on the pixels they were found on."""
    objects = args.get("object")
    if not isinstance(objects, Objects):
        raise ModuleError(f"{op} needs objects for 'object', got {type(objects).__name__}")
    if not objects.found_on(image):
        raise ModuleError(f"{op}: the objects were found in another image ({objects.image_key[:19]}…), not in this "
                          f"one ({image.key[:19]}…); boxes land on the right pixels only in the image they were "
                          f"found in and its edits that move no pixel")
    if objects.image_size != (image.width, image.height):
        ow, oh = objects.image_size
        raise ModuleError(f"{op}: the objects say their image is {ow}×{oh}, but this one is "
                          f"{image.width}×{image.height}")
    return objects


def checked(batch: Sequence[dict[str, Any]], check: Any) -> tuple[list[int], list[Any], list[Any]]:
    """Split a batch into the items ``check`` accepts (their indices and checked values) and a result
    list holding a ModuleError where it refused: one bad item never fails the others."""
    out: list[Any] = [None] * len(batch)
    good: list[int] = []
    values: list[Any] = []
    for i, args in enumerate(batch):
        try:
            values.append(check(args))
            good.append(i)
        except ModuleError as e:
            out[i] = e
    return good, values, out
