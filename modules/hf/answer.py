"""VQA and CAPTION: BLIP or ViLT question answering, BLIP captioning.

- ``VQA(image, question)``: the family comes from the role's ``config.json``: BLIP
  (``BlipForQuestionAnswering``, written against Salesforce/blip-vqa-base; VisProg used
  Salesforce/blip-vqa-capfilt-large) generates a short answer; ViLT (``ViltForQuestionAnswering``,
  written against dandelin/vilt-b32-finetuned-vqa) picks one of its answer classes (its
  ``id2label``). A folder of any other kind, or of BLIP weights for another task, is a load error
  that says so.
- ``CAPTION(image)``: BLIP captioning (``BlipForConditionalGeneration``, written against
  Salesforce/blip-image-captioning-base), unconditional, greedy, at most ``CAPTION_TOKENS`` tokens.

A batch is one forward: one generate for all its questions (or images), one classification for
ViLT. Where transformers would answer an item differently in a batch than alone, this does not:

- BLIP's answer decoder attends to the encoded question. ``BlipForQuestionAnswering.generate``
  gives it a mask of ones, so a short question attended to the padding its batch-mates added;
  here the decoder is run with the question's own mask, and ``_mask_cross_attention`` makes
  transformers 5's cross-attention layers use it (they drop the mask they are handed).
- ViLT samples image patches at random when ``max_image_length`` is set; it is unset at load
  (every patch is seen), so an answer depends on the image alone, as its cache key promises.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from program_dsl import param, signature

from ..base import Module, ModuleError
from .base import HfModule, checked, pil_of
from .weights import RoleWeights

__all__ = ["CAPTION_SIG", "CAPTION_TOKENS", "VQA_SIG", "VQA_TOKENS", "Caption", "Vqa", "caption_modules",
           "vqa_modules"]

CODE_VERSION = "1"
VQA_TOKENS = 16  # VQA answers are a few words (VQAv2's are 1–3); the decoder stops at [SEP] before
CAPTION_TOKENS = 30  # BLIP's COCO-style captions run 8–20 tokens
MAX_QUESTION = 1000  # characters; the tokenizer truncates to the model's length anyway

VQA_SIG = signature("VQA", "Text", param("image", "Image"), param("question", "Text"),
                    doc="Answer a question about the image (BLIP or ViLT).", pack="hf")
CAPTION_SIG = signature("CAPTION", "Text", param("image", "Image"),
                        doc="Describe the image in a sentence (BLIP).", pack="hf")

# model_type → the class that answers questions in that family.
_VQA_FAMILIES = {"blip": "BlipForQuestionAnswering", "vilt": "ViltForQuestionAnswering"}


def _architectures(config: dict[str, Any]) -> list[str]:
    archs = config.get("architectures")
    return [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []


def _text_limit(model: Any, processor: Any) -> int:
    """How many tokens the text side takes: the model's position table, or the tokenizer's own limit."""
    config = getattr(model.config, "text_config", model.config)
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else int(processor.tokenizer.model_max_length)


def _mask_cross_attention(decoder: Any) -> None:
    """Make BLIP's decoder honour the mask it is given over the question: transformers 5 hands a
    cross-attention layer its mask as ``attention_mask``, which that layer ignores in favour of an
    ``encoder_attention_mask`` it is never given, so every answer in a batch attended to the padding
    its longer batch-mates added. Where the mask arrives properly (transformers 4) this does nothing."""
    import inspect

    for layer in getattr(getattr(getattr(decoder, "bert", None), "encoder", None), "layer", ()):
        attention = getattr(getattr(layer, "crossattention", None), "self", None)
        if attention is None:
            continue
        inner = attention.forward
        params = inspect.signature(inner)
        if not {"attention_mask", "encoder_hidden_states", "encoder_attention_mask"} <= set(params.parameters):
            continue

        def forward(*args: Any, _inner: Any = inner, _params: Any = params, **kwargs: Any) -> Any:
            bound = _params.bind(*args, **kwargs)
            given = bound.arguments
            if given.get("encoder_hidden_states") is not None and given.get("encoder_attention_mask") is None:
                given["encoder_attention_mask"] = given.get("attention_mask")
            return _inner(*bound.args, **bound.kwargs)

        attention.forward = forward


class Vqa(HfModule):
    """VQA: a short answer to a question about an image (BLIP generates it, ViLT classifies it)."""

    code_version = CODE_VERSION
    expected = ("BLIP question answering (BlipForQuestionAnswering, e.g. Salesforce/blip-vqa-base) or ViLT "
                "(ViltForQuestionAnswering, e.g. dandelin/vilt-b32-finetuned-vqa), with their processor")

    def __init__(self, weights: RoleWeights) -> None:
        super().__init__(weights)
        self.signature = VQA_SIG
        self.family = ""

    def build(self, source: Path | str, local_only: bool) -> tuple[Any, Any]:
        import transformers

        config = self.model_config(source, local_only)
        family = config.get("model_type")
        if family not in _VQA_FAMILIES:
            raise self.wrong_weights(source, f"holds a {family!r} model, which does not answer questions here")
        wanted = _VQA_FAMILIES[family]
        archs = _architectures(config)
        if archs and wanted not in archs:
            raise self.wrong_weights(source, f"holds {family} weights for {', '.join(archs)}, not {wanted}")
        processor = self.processor_from(transformers.AutoProcessor, source, local_only)
        model = self.pretrained(getattr(transformers, wanted), source, local_only)
        if family == "vilt":
            model.config.max_image_length = -1
        else:
            _mask_cross_attention(model.text_decoder)
        self.family = family
        return model, processor

    def _read(self, args: dict[str, Any]) -> tuple[Image.Image, str]:
        _, pic = pil_of(args, "VQA")
        question = args.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ModuleError("VQA needs a question, e.g. 'What colour is the bus?'")
        if len(question) > MAX_QUESTION:
            raise ModuleError(f"VQA: the question is {len(question)} characters long; at most {MAX_QUESTION} are read")
        return pic, " ".join(question.split())

    def run(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        good, reads, out = checked(batch, self._read)
        if not reads:
            return out
        pics = [p for p, _ in reads]
        questions = [q for _, q in reads]
        inputs = self.to_device(self.processor(images=pics, text=questions, padding=True, truncation=True,
                                               max_length=_text_limit(self.model, self.processor),
                                               return_tensors="pt"))
        answers = self._vilt(inputs) if self.family == "vilt" else self._blip(inputs)
        for i, answer in zip(good, answers):
            out[i] = answer
        return out

    def _blip(self, inputs: dict[str, Any]) -> list[str]:
        import torch

        m = self.model
        image = m.vision_model(pixel_values=inputs["pixel_values"])[0]
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        question = m.text_encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                  encoder_hidden_states=image, encoder_attention_mask=image_mask,
                                  return_dict=False)[0]
        text = m.config.text_config
        start = torch.full((question.shape[0], 1), m.decoder_start_token_id, dtype=torch.long, device=image.device)
        # The question's own mask, not transformers' mask of ones: padding must not change an answer.
        ids = m.text_decoder.generate(input_ids=start, eos_token_id=text.sep_token_id, pad_token_id=text.pad_token_id,
                                      encoder_hidden_states=question, encoder_attention_mask=inputs["attention_mask"],
                                      max_new_tokens=VQA_TOKENS, do_sample=False, num_beams=1)
        return [a.strip() for a in self.processor.batch_decode(ids, skip_special_tokens=True)]

    def _vilt(self, inputs: dict[str, Any]) -> list[str]:
        logits = self.model(**inputs).logits
        labels = self.model.config.id2label
        return [str(labels.get(int(k), k)) for k in logits.argmax(-1).tolist()]


class Caption(HfModule):
    """CAPTION: one sentence about an image (BLIP)."""

    code_version = CODE_VERSION
    expected = ("BLIP captioning (BlipForConditionalGeneration, e.g. Salesforce/blip-image-captioning-base), "
                "with its processor")

    def __init__(self, weights: RoleWeights) -> None:
        super().__init__(weights)
        self.signature = CAPTION_SIG

    def build(self, source: Path | str, local_only: bool) -> tuple[Any, Any]:
        from transformers import AutoProcessor, BlipForConditionalGeneration

        config = self.model_config(source, local_only)
        family = config.get("model_type")
        if family != "blip":
            raise self.wrong_weights(source, f"holds a {family!r} model, not a BLIP one")
        archs = _architectures(config)
        if archs and "BlipForConditionalGeneration" not in archs:
            raise self.wrong_weights(source, f"holds BLIP weights for {', '.join(archs)}, not captioning")
        processor = self.processor_from(AutoProcessor, source, local_only)
        return self.pretrained(BlipForConditionalGeneration, source, local_only), processor

    def run(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        good, pics, out = checked(batch, lambda args: pil_of(args, "CAPTION")[1])
        if not pics:
            return out
        inputs = self.to_device(self.processor(images=pics, return_tensors="pt"))
        ids = self.model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=CAPTION_TOKENS,
                                  do_sample=False, num_beams=1)
        for i, text in zip(good, self.processor.batch_decode(ids, skip_special_tokens=True)):
            out[i] = text.strip()
        return out


def vqa_modules(weights: RoleWeights) -> list[Module]:
    return [Vqa(weights)]


def caption_modules(weights: RoleWeights) -> list[Module]:
    return [Caption(weights)]
