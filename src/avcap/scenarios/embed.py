"""Text embeddings of scenario captions, offline.

The default embedder is WordLlama (`wordllama` on PyPI): its wheel ships its weights
(`weights/l2_supercat_256.safetensors`), so it loads with no model hub in 0.1 s and embeds ~50k
captions/s on one CPU core. The configurable upgrade is any sentence-transformers model directory
(`pip install sentence-transformers`). Every embedder returns L2-normalised float32 rows, so the
database searches by cosine similarity with a dot product.

A database remembers the embedder that filled it (`Embedder.name`, `Embedder.dim` in
avcap_db.json); `ScenarioDB` refuses to ingest or search with another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

DEFAULT = "wordllama"
_WORDLLAMA_DIM = 256  # the dimension of the weights the wheel ships (l2_supercat_256)


class EmbedderError(ValueError):
    """An embedder that cannot be loaded or does not match a database: one line saying why."""


class Embedder:
    """`name` and `dim` identify the vector space; `embed` maps texts to normalised float32 rows."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def spec(self) -> dict:
        return {"name": self.name, "dim": self.dim}


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row, e.g. an empty text, stays zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return v / norms


class WordLlamaEmbedder(Embedder):
    """WordLlama's l2_supercat weights from the installed wheel (no download). `dim` < 256 keeps
    the first `dim` components (the weights are Matryoshka-trained, so a prefix is a coarser space)."""

    def __init__(self, dim: int = _WORDLLAMA_DIM):
        # wordllama imported here: only ingest and search need it, not `avcap --help`
        import wordllama
        from wordllama import WordLlama

        if not 16 <= dim <= _WORDLLAMA_DIM:
            raise EmbedderError(f"wordllama: dim {dim} is outside 16..{_WORDLLAMA_DIM}")
        weights_dir = Path(wordllama.__file__).parent
        try:
            self._model = WordLlama.load(cache_dir=weights_dir, disable_download=True,
                                         trunc_dim=None if dim == _WORDLLAMA_DIM else dim)
        except (FileNotFoundError, OSError) as exc:
            raise EmbedderError(f"wordllama: its packaged weights did not load from {weights_dir} ({exc}); "
                                "reinstall it: pip install --force-reinstall wordllama") from None
        self.dim = dim
        self.name = "wordllama:l2_supercat" if dim == _WORDLLAMA_DIM else f"wordllama:l2_supercat@{dim}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        v = self._model.embed(list(texts), norm=False, batch_size=512)
        return normalise(np.asarray(v)[:, : self.dim])


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model directory (loaded from disk only)."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise EmbedderError(f"{model_dir}: not a sentence-transformers model directory (no such directory)")
        try:
            # sentence-transformers is optional (torch, transformers); imported only when asked for
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbedderError("a sentence-transformers model needs the package: pip install sentence-transformers") from None
        try:
            self._model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        except Exception as exc:  # a directory that is not a model: one line, not a traceback
            raise EmbedderError(f"{model_dir}: not a loadable sentence-transformers model ({type(exc).__name__}: {exc})") from None
        self.model_dir = model_dir.resolve()
        self.dim = int(self._model.get_sentence_embedding_dimension())
        self.name = f"sentence-transformers:{self.model_dir.name}"

    def spec(self) -> dict:
        return {"name": self.name, "dim": self.dim, "path": str(self.model_dir)}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        v = self._model.encode(list(texts), batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        return normalise(v)


def load_embedder(spec: Optional[str] = None) -> Embedder:
    """`None` or "wordllama" (the default), "wordllama@128" (a Matryoshka prefix), or the path of a
    sentence-transformers model directory."""
    spec = (spec or DEFAULT).strip()
    if spec == "wordllama":
        return WordLlamaEmbedder()
    if spec.startswith("wordllama@"):
        try:
            dim = int(spec.split("@", 1)[1])
        except ValueError:
            raise EmbedderError(f"--embedder {spec!r}: expected wordllama@<dim>, e.g. wordllama@128") from None
        return WordLlamaEmbedder(dim)
    if spec.startswith("wordllama:"):  # the name a database records, e.g. wordllama:l2_supercat@128
        rest = spec.split(":", 1)[1]
        return WordLlamaEmbedder(int(rest.split("@", 1)[1])) if "@" in rest else WordLlamaEmbedder()
    path = spec.split(":", 1)[1] if spec.startswith("sentence-transformers:") else spec
    return SentenceTransformerEmbedder(path)


class ScenarioVectors:
    """The vector of a scenario: the caption's embedding plus the normalised sum of the embeddings
    of its attribute answers, normalised (caption and answers weigh alike). An answer text is one
    of a few hundred choices, so each is embedded once and cached: an ingest embeds only captions."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self._index: dict[str, int] = {}  # answer text -> its row of _matrix
        self._matrix = np.zeros((0, embedder.dim), dtype=np.float32)

    def __call__(self, captions: Sequence[Optional[str]], answers: Sequence[Sequence[str]]) -> np.ndarray:
        e = self.embedder
        todo = sorted({a for row in answers for a in row if a not in self._index})
        if todo:
            base = len(self._index)
            self._index.update((a, base + i) for i, a in enumerate(todo))
            self._matrix = np.concatenate([self._matrix, e.embed(todo)]) if len(self._matrix) else e.embed(todo)
        out = np.zeros((len(captions), e.dim), dtype=np.float32)
        has_caption = [i for i, c in enumerate(captions) if c]
        if has_caption:
            out[has_caption] = e.embed([captions[i] for i in has_caption])
        if self._index:
            counts = np.zeros((len(captions), len(self._index)), dtype=np.float32)
            rows = [i for i, row in enumerate(answers) for _ in row]
            cols = [self._index[a] for row in answers for a in row]
            np.add.at(counts, (rows, cols), 1.0)
            out += normalise(counts @ self._matrix)
        return normalise(out)
