"""Signatures of VisProg's modules, declared once so their programs type-check on any deployment;
``pack`` names the pack whose model runs each one, so a missing model is reported by name at run time."""

from __future__ import annotations

from program_dsl import Signature, param, signature

_CROP_DOC = "Crop the part of the image {where} the box (the whole image if there is no box)."
_DIRECTIONS = {
    "CROP_LEFTOF": "left of", "CROP_RIGHTOF": "right of", "CROP_ABOVE": "above", "CROP_BELOW": "below",
    "CROP_FRONTOF": "in front of", "CROP_INFRONT": "in front of", "CROP_INFRONTOF": "in front of",
    "CROP_BEHIND": "behind", "CROP_AHEAD": "ahead of",
}

CORE: tuple[Signature, ...] = (
    signature("COUNT", "Number", param("box", "Objects", doc="the objects to count"),
              doc="Number of objects."),
    signature("CROP", "Image", param("image", "Image"), param("box", "Objects"),
              doc="Crop the image to the union of the boxes, slightly enlarged."),
    *(signature(name, "Image", param("image", "Image"), param("box", "Objects"), doc=_CROP_DOC.format(where=where))
      for name, where in _DIRECTIONS.items()),
    signature("UNION", "Objects", param("left", "Objects"), param("right", "Objects"),
              doc="Objects in either set (same image), duplicates dropped."),
    signature("INTERSECT", "Objects", param("left", "Objects"), param("right", "Objects"),
              doc="Objects present in both sets."),
    signature("DIFFERENCE", "Objects", param("left", "Objects"), param("right", "Objects"),
              doc="Objects of the first set not in the second."),
    signature("EXISTS", "Bool", param("box", "Objects"), doc="Whether there is at least one object."),
    signature("SORT", "Objects", param("box", "Objects"),
              param("by", "Text", "x", choices=("x", "y", "area", "score"), doc="what to order by"),
              param("descending", "Bool", False), doc="Objects ordered by position, area or score."),
    signature("PICK", "Objects", param("box", "Objects"), param("index", "Number", 0),
              doc="The object at a position of the list (negative counts from the end)."),
    signature("REGION", "Objects", param("image", "Image"),
              param("box", "List[Number]", doc="x1, y1, x2, y2 in pixels"), param("label", "Text", "region"),
              doc="A region given by its box: lets a program point at a known place without a detector."),
    signature("TAG", "Image", param("image", "Image"), param("object", "Objects"),
              doc="Draw the objects' boxes and labels."),
)

NEURAL: tuple[Signature, ...] = (
    signature("LOC", "Objects", param("image", "Image"), param("object", "Text", doc="what to find"),
              doc="Find objects by description.", pack="shapes"),
    signature("VQA", "Text", param("image", "Image"), param("question", "Text"),
              doc="Answer a question about the image.", pack="hf"),
    signature("SEG", "Objects", param("image", "Image"), doc="Segment the image into objects.", pack="photo"),
    signature("SELECT", "Objects", param("image", "Image"), param("object", "Objects"), param("query", "Text"),
              param("category", "Text", None), doc="Objects matching a query.", pack="photo"),
    signature("COLORPOP", "Image", param("image", "Image"), param("object", "Objects"),
              doc="Keep the objects in colour, the rest in grey.", pack="photo"),
    signature("BGBLUR", "Image", param("image", "Image"), param("object", "Objects"),
              doc="Blur everything but the objects.", pack="photo"),
    signature("REPLACE", "Image", param("image", "Image"), param("object", "Objects"), param("prompt", "Text"),
              doc="Inpaint the objects from a prompt.", pack="hf"),
    signature("EMOJI", "Image", param("image", "Image"), param("object", "Objects"), param("emoji", "Text"),
              doc="Cover the objects with an emoji.", pack="photo"),
    signature("FACEDET", "Objects", param("image", "Image"), doc="Detect faces.", pack="photo"),
    signature("LIST", "List[Text]", param("query", "Text"), param("max", "Number", 10),
              doc="A list of names for a query, from a language model.", pack="hf"),
    signature("CLASSIFY", "Objects", param("image", "Image"), param("object", "Objects"),
              param("categories", "List[Text]"), doc="Label each object with one of the categories.", pack="hf"),
)

VISPROG: tuple[Signature, ...] = CORE + NEURAL
