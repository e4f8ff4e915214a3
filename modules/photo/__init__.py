"""The photo pack: pretrained models that ship inside PyPI packages, run offline on real photos —
faces (MediaPipe's BlazeFace), people (MediaPipe's selfie segmentation), text (PP-OCR through
RapidOCR), who is who (dlib's face embeddings and the ``faces`` gallery) — and the edits VisProg's
programs make with what they find.

Each part lives in its own module and gives its modules through ``modules()``; the pack is their
union. Nothing here is loaded before the pool loads it: building the pack imports no model.
"""

from __future__ import annotations

from ..base import Pack


def pack() -> Pack:
    from . import edits, faces, identity, locate, people, text

    known, gallery = identity.build()
    return Pack("photo", [*faces.modules(), *people.modules(), *text.modules(), *edits.modules(), *known,
                           *locate.modules()],
                doc="Faces, people and text on real photos with models shipped in packages; VisProg's edits; "
                    "who is who from a gallery of known faces.",
                galleries=[gallery])
