"""VQA and CAPTION: BLIP, BLIP-2 or ViLT question answering, BLIP or BLIP-2 captioning.

- ``VQA(image, question)``: the family comes from the role's ``config.json``: BLIP
  (``BlipForQuestionAnswering``, written against Salesforce/blip-vqa-base; VisProg used
  Salesforce/blip-vqa-capfilt-large) generates a short answer; BLIP-2
  (``Blip2ForConditionalGeneration``, written against Salesforce/blip2-opt-2.7b and
  Salesforce/blip2-flan-t5-xl) generates one after its documented prompt ``Question: … Answer:``,
  and an empty answer is an error, not a result; ViLT (``ViltForQuestionAnswering``, written
  against dandelin/vilt-b32-finetuned-vqa) picks one of its answer classes (its ``id2label``). A
  folder of any other kind, or of BLIP weights for another task, is a load error that says so.
- ``CAPTION(image)``: BLIP captioning (``BlipForConditionalGeneration``, written against
  Salesforce/blip-image-captioning-base) or BLIP-2 (the same BLIP-2 folders as VQA's),
  unconditional, greedy, at most ``CAPTION_TOKENS`` tokens.

A batch is one forward: one generate for all its questions (or images), one classification for
ViLT. Where transformers would answer an item differently in a batch than alone, this does not:

- BLIP's answer decoder attends to the encoded question. ``BlipForQuestionAnswering.generate``
  gives it a mask of ones, so a short question attended to the padding its batch-mates added;
  here the decoder is run with the question's own mask, and ``_mask_cross_attention`` makes
  transformers 5's cross-attention layers use it (they drop the mask they are handed).
- ViLT samples image patches at random when ``max_image_length`` is set; it is unset at load
  (every patch is seen), so an answer depends on the image alone, as its cache key promises.
- BLIP-2 over a decoder-only language model (OPT) pads prompts on the left, so every answer is
  generated right after its own prompt; the processor then puts the image tokens in front of the
  padding (``[image…][pad…][question]``), which changes nothing, as OPT numbers positions from the
  mask. Over T5 it pads on the right, where T5's relative positions leave the text in place.

BLIP-2 on CUDA in float16 keeps what transformers keeps in float32 at that precision (the Q-Former,
its query tokens, T5's feed-forward outputs), as ``from_pretrained(dtype=float16)`` would.
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
                    doc="Answer a question about the image (BLIP, BLIP-2 or ViLT).", pack="hf")
CAPTION_SIG = signature("CAPTION", "Text", param("image", "Image"),
                        doc="Describe the image in a sentence (BLIP or BLIP-2).", pack="hf")

# model_type → the class that answers questions (or captions) in that family.
_VQA_FAMILIES = {"blip": "BlipForQuestionAnswering", "vilt": "ViltForQuestionAnswering",
                 "blip-2": "Blip2ForConditionalGeneration"}
_CAPTION_FAMILIES = {"blip": "BlipForConditionalGeneration", "blip-2": "Blip2ForConditionalGeneration"}
_FAMILY_NAMES = {"blip": "BLIP", "blip-2": "BLIP-2"}
# BLIP-2's documented VQA prompt; its model card and paper use the same.
BLIP2_PROMPT = "Question: {} Answer:"
# A tokenizer's model_max_length at or above this is transformers' "no limit" placeholder (1e30),
# which the tokenizers library cannot take as a truncation length.
_NO_LIMIT = 1 << 31


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


def _blip2_ready(module: HfModule, source: Path | str, model: Any, processor: Any) -> None:
    """Check that BLIP-2's processor puts the image where the model reads it, and pad for its
    language model. The model swaps its image features in at ``image_token_index`` tokens, which the
    processor inserts ``num_query_tokens`` times; a processor saved without that count inserts none,
    and the model would answer without ever seeing the image."""
    config = model.config
    wanted = int(config.num_query_tokens)
    have = getattr(processor, "num_query_tokens", None)
    if have is None:
        processor.num_query_tokens = wanted
    elif int(have) != wanted:
        raise module.wrong_weights(source, f"has a processor for {have} image query tokens; the model takes {wanted}")
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids(str(processor.image_token))
    if config.image_token_index is None or image_id != config.image_token_index:
        raise module.wrong_weights(source, f"has a tokenizer whose image token {str(processor.image_token)!r} is "
                                           f"{image_id}, not the model's image_token_index "
                                           f"{config.image_token_index}; re-save it with a current transformers")
    tokenizer.padding_side = "right" if config.text_config.is_encoder_decoder else "left"
    # The prompt ends in "Answer:"; an over-long question loses its start, never that.
    tokenizer.truncation_side = "left"


def _blip2_text_limit(model: Any, processor: Any, new_tokens: int) -> int | None:
    """The longest prompt BLIP-2 takes, image tokens included, or None where nothing bounds it. OPT's
    position table holds the image tokens, the prompt and the answer; T5's relative positions have no
    table, so only the tokenizer's own limit (512 for Flan-T5) applies."""
    text = model.config.text_config
    limit = getattr(text, "max_position_embeddings", None)
    if not text.is_encoder_decoder and isinstance(limit, int) and limit > 0:
        return limit - new_tokens
    own = int(processor.tokenizer.model_max_length)
    return own if own < _NO_LIMIT else None


def _newline_id(tokenizer: Any) -> int | None:
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 and tokenizer.decode(ids) == "\n" else None


def _blip2_generate(model: Any, processor: Any, inputs: dict[str, Any], new_tokens: int) -> list[str]:
    """One greedy generate for the batch; each item's text after its prompt, up to its first line break."""
    import torch

    text, tokenizer = model.config.text_config, processor.tokenizer
    decoder_only = not text.is_encoder_decoder
    stops: set[int] = set()
    for eos in (text.eos_token_id, tokenizer.eos_token_id):
        stops.update([eos] if isinstance(eos, int) else eos or ())
    # BLIP-2's OPT models were trained on text ending in a line break and stop there (as LAVIS's
    # generate does); past it they run on to the token limit with more lines.
    newline = _newline_id(tokenizer) if decoder_only else None
    if newline is not None:
        stops.add(newline)
    pad = text.pad_token_id if text.pad_token_id is not None else tokenizer.pad_token_id
    prompt = inputs["input_ids"]
    ids = model.generate(pixel_values=inputs["pixel_values"], input_ids=prompt, attention_mask=inputs["attention_mask"],
                         max_new_tokens=new_tokens, do_sample=False, num_beams=1, eos_token_id=sorted(stops),
                         pad_token_id=pad)
    # A decoder-only model returns the prompt (image tokens, question) followed by the answer.
    n = prompt.shape[1]
    if decoder_only and ids.shape[1] >= n and torch.equal(ids[:, :n], prompt):
        ids = ids[:, n:]
    return [t.split("\n", 1)[0].strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def _half_but_fp32_parts(model: Any, dtype: Any) -> Any:
    """``model`` in float16 but for what transformers keeps in float32 at that precision (its
    ``_keep_in_fp32_modules``: BLIP-2's Q-Former and query tokens, T5's ``wo`` layers, which overflow
    float16), cast tensor by tensor so the kept parts are never rounded through float16. The model
    casts between the two where they meet."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not keep.intersection(name.split(".")):
            tensor.data = tensor.data.to(dtype)
    return model


class _Blip2Precision(HfModule):
    """Half precision that honours BLIP-2's float32 parts under float16 (bfloat16 keeps all in
    bfloat16, as transformers does)."""

    family = ""

    def to_half(self, model: Any, dtype: Any) -> Any:
        import torch

        if self.family == "blip-2" and dtype == torch.float16:
            return _half_but_fp32_parts(model, dtype)
        return super().to_half(model, dtype)


class Vqa(_Blip2Precision):
    """VQA: a short answer to a question about an image (BLIP and BLIP-2 generate it, ViLT classifies it)."""

    code_version = CODE_VERSION
    expected = ("BLIP question answering (BlipForQuestionAnswering, e.g. Salesforce/blip-vqa-base), BLIP-2 "
                "(Blip2ForConditionalGeneration, e.g. Salesforce/blip2-opt-2.7b) or ViLT "
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
        elif family == "blip-2":
            _blip2_ready(self, source, model, processor)
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
        answers: list[Any]
        if self.family == "blip-2":
            answers = self._blip2(pics, questions)
        else:
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

    def _blip2(self, pics: list[Image.Image], questions: list[str]) -> list[str | ModuleError]:
        limit = _blip2_text_limit(self.model, self.processor, VQA_TOKENS)
        bounds: dict[str, Any] = {"truncation": True, "max_length": limit} if limit is not None else {}
        inputs = self.to_device(self.processor(images=pics, text=[BLIP2_PROMPT.format(q) for q in questions],
                                               padding=True, return_tensors="pt", **bounds))
        # No text is no answer: returning "" would cache a non-answer as if the model had given one.
        return [a or ModuleError("VQA: BLIP-2 gave no answer to this question")
                for a in _blip2_generate(self.model, self.processor, inputs, VQA_TOKENS)]

    def _vilt(self, inputs: dict[str, Any]) -> list[str]:
        logits = self.model(**inputs).logits
        labels = self.model.config.id2label
        return [str(labels.get(int(k), k)) for k in logits.argmax(-1).tolist()]


class Caption(_Blip2Precision):
    """CAPTION: one sentence about an image (BLIP or BLIP-2)."""

    code_version = CODE_VERSION
    expected = ("BLIP captioning (BlipForConditionalGeneration, e.g. Salesforce/blip-image-captioning-base) or "
                "BLIP-2 (Blip2ForConditionalGeneration, e.g. Salesforce/blip2-opt-2.7b), with its processor")

    def __init__(self, weights: RoleWeights) -> None:
        super().__init__(weights)
        self.signature = CAPTION_SIG
        self.family = ""

    def build(self, source: Path | str, local_only: bool) -> tuple[Any, Any]:
        import transformers

        config = self.model_config(source, local_only)
        family = config.get("model_type")
        if family not in _CAPTION_FAMILIES:
            raise self.wrong_weights(source, f"holds a {family!r} model, not a BLIP one")
        wanted = _CAPTION_FAMILIES[family]
        archs = _architectures(config)
        if archs and wanted not in archs:
            raise self.wrong_weights(source, f"holds {_FAMILY_NAMES[family]} weights for {', '.join(archs)}, "
                                             f"not captioning")
        processor = self.processor_from(transformers.AutoProcessor, source, local_only)
        model = self.pretrained(getattr(transformers, wanted), source, local_only)
        if family == "blip-2":
            _blip2_ready(self, source, model, processor)
        self.family = family
        return model, processor

    def run(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        good, pics, out = checked(batch, lambda args: pil_of(args, "CAPTION")[1])
        if not pics:
            return out
        if self.family == "blip-2":
            # An empty prompt: the image tokens and the tokenizer's own start (OPT's BOS, T5's EOS), as
            # LAVIS captions; transformers' own default start needs a BOS id that T5 has not.
            inputs = self.to_device(self.processor(images=pics, text=[""] * len(pics), padding=True,
                                                   return_tensors="pt"))
            texts = _blip2_generate(self.model, self.processor, inputs, CAPTION_TOKENS)
        else:
            inputs = self.to_device(self.processor(images=pics, return_tensors="pt"))
            ids = self.model.generate(pixel_values=inputs["pixel_values"], max_new_tokens=CAPTION_TOKENS,
                                      do_sample=False, num_beams=1)
            texts = [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        for i, text in zip(good, texts):
            out[i] = text
        return out


def vqa_modules(weights: RoleWeights) -> list[Module]:
    return [Vqa(weights)]


def caption_modules(weights: RoleWeights) -> list[Module]:
    return [Caption(weights)]
