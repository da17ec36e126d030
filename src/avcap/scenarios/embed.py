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

import itertools
import json
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

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
    the first `dim` components (the weights are Matryoshka-trained, so a prefix is a coarser space).

    WordLlama's vector of a text is the mean of its tokens' embedding rows. `embed` computes the
    same direction (normalised, so mean and sum agree) without padding every batch to its longest
    text: per block of texts, a (texts x distinct tokens) count matrix times those tokens' rows,
    one BLAS product (~10x faster than `WordLlama.embed` on long captions)."""

    BLOCK = 1024  # texts per count matrix

    def __init__(self, dim: int = _WORDLLAMA_DIM):
        # wordllama imported here: only ingest and search need it, not `avcap --help`
        import wordllama
        from tokenizers import Tokenizer
        from wordllama import WordLlama

        if not 16 <= dim <= _WORDLLAMA_DIM:
            raise EmbedderError(f"wordllama: dim {dim} is outside 16..{_WORDLLAMA_DIM}")
        weights_dir = Path(wordllama.__file__).parent
        try:
            model = WordLlama.load(cache_dir=weights_dir, disable_download=True)
        except (FileNotFoundError, OSError) as exc:
            raise EmbedderError(f"wordllama: its packaged weights did not load from {weights_dir} ({exc}); "
                                "reinstall it: pip install --force-reinstall wordllama") from None
        self._rows = np.ascontiguousarray(model.embedding[:, :dim], dtype=np.float32)
        self._tokenizer = Tokenizer.from_str(model.tokenizer.to_str())  # a copy: no padding, no truncation
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._word_ids: Optional[dict[str, list[int]]] = {} if _words_are_independent(self._tokenizer) else None
        self.dim = dim
        self.name = "wordllama:l2_supercat" if dim == _WORDLLAMA_DIM else f"wordllama:l2_supercat@{dim}"

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The tokenizer's ids of each text. WordLlama's tokenizer (Llama 2's SentencePiece BPE:
        spaces become "▁", no pre-tokenizer) has no token with a "▁" after another character, so no
        merge crosses a word boundary: each "▁word" is tokenized once and cached, the same ids as
        tokenizing the whole text, ~10x faster on captions."""
        cache = self._word_ids
        if cache is None:
            return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]
        if len(cache) > 1_000_000:
            cache.clear()
        tokenize = self._tokenizer.model.tokenize
        out = []
        for text in texts:
            ids: list[int] = []
            if text:
                for piece in _PIECE.findall("\u2581" + text.replace(" ", "\u2581")):
                    got = cache.get(piece)
                    if got is None:
                        got = cache[piece] = [t.id for t in tokenize(piece)]
                    ids.extend(got)
            out.append(ids)
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.token_ids(texts)
        lens = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lens.sum()))
        np.clip(flat, 0, len(self._rows) - 1, out=flat)
        ends = np.cumsum(lens)
        starts = ends - lens
        row_of = np.repeat(np.arange(len(texts)), lens)
        for i in range(0, len(texts), self.BLOCK):
            j = min(i + self.BLOCK, len(texts))
            a, b = starts[i], ends[j - 1]
            if a == b:
                continue
            tokens, col = np.unique(flat[a:b], return_inverse=True)
            counts = np.bincount((row_of[a:b] - i) * len(tokens) + col, minlength=(j - i) * len(tokens))
            out[i:j] = counts.reshape(j - i, len(tokens)).astype(np.float32) @ self._rows[tokens]
        return normalise(out)


_PIECE = re.compile("\u2581*[^\u2581]+|\u2581+")  # a run of "▁" and the word after it


def _words_are_independent(tokenizer) -> bool:
    """Is this a SentencePiece-style BPE (spaces to "▁", no pre-tokenizer) whose vocabulary has no
    token with a "▁" after another character? Then `token_ids` may tokenize word by word."""
    conf = json.loads(tokenizer.to_str())
    norm = conf.get("normalizer") or {}
    steps = [n.get("type") for n in norm.get("normalizers", [])] if norm.get("type") == "Sequence" else [norm.get("type")]
    if conf.get("pre_tokenizer") is not None or steps != ["Prepend", "Replace"] or conf["model"].get("type") != "BPE":
        return False
    return not any("\u2581" in t.lstrip("\u2581") for t in conf["model"]["vocab"])


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
    """The vector of a scenario: its caption's embedding; a record without a caption gets the
    normalised sum of its stated answers' embeddings instead (each answer text is one of a few
    hundred choices: embedded once and cached).

    Why the caption alone: on the retrieval benchmark's dev queries (2,000 synthetic scenes,
    reference captions and world-truth answers), adding the answers' sum to the caption's
    embedding did not help: hybrid precision@10 0.48 with the caption alone, 0.44 with caption
    and answers weighed alike, 0.44 with the answers at half weight. The answers stay searchable
    as filters and in the full-text index."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self._index: dict[str, int] = {}  # answer text -> its row of _matrix
        self._matrix = np.zeros((0, embedder.dim), dtype=np.float32)

    def __call__(self, captions: Sequence[Optional[str]], answers: Mapping[str, np.ndarray]) -> np.ndarray:
        """`answers`: answer text -> the indices (into `captions`) of the records stating it."""
        e = self.embedder
        n = len(captions)
        out = np.zeros((n, e.dim), dtype=np.float32)
        has_caption = np.array([bool(c) for c in captions], dtype=bool)
        if has_caption.any():
            out[has_caption] = e.embed([c for c in captions if c])
        if has_caption.all() or not answers:
            return out
        sums = np.zeros_like(out)
        for text, rows in answers.items():
            rows = rows[~has_caption[rows]]
            if len(rows):
                if text not in self._index:
                    self._index[text] = len(self._matrix)
                    self._matrix = np.concatenate([self._matrix, e.embed([text])])
                np.add.at(sums, rows, self._matrix[self._index[text]])
        out[~has_caption] = normalise(sums[~has_caption])
        return out
