"""VisProg's modules that no engine code implements, declared so their programs type-check on any
deployment. ``pack`` names the pack whose model runs each one, so a missing model is reported by
name at run time. A pack that implements one of these names must agree with the declaration in
parameter names, types and which parameters are required (``packs.check_declared``)."""

from __future__ import annotations

from program_dsl import Catalog, Signature, param, signature

_OBJECT_DOC = "what to find: a phrase ('muffin', 'large red circle'), or 'object' for everything"

DECLARED: tuple[Signature, ...] = (
    # 'object' may be left out: COUNT(LOC(IMAGE)) counts everything the detector finds.
    signature("LOC", "Objects", param("image", "Image"), param("object", "Text", "object", doc=_OBJECT_DOC),
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
    signature("CAPTION", "Text", param("image", "Image"), doc="Describe the image in a sentence.", pack="hf"),
    signature("DEPTH", "Image", param("image", "Image"),
              doc="The image's depth map (nearer is brighter).", pack="hf"),
    # VisProg has no depth question; ViperGPT's programs ask which object is in front.
    signature("DEPTH_OF", "Objects", param("image", "Image"), param("object", "Objects"),
              doc="The objects, each with its depth (larger is nearer).", pack="hf"),
)


def declared_catalog(*implemented: Signature) -> Catalog:
    """The declared signatures, with ``implemented`` ones (a pack's) in their place: what a
    catalog looks like before any pack is loaded, for tools that only type-check."""
    return Catalog.of([*DECLARED, *implemented])

