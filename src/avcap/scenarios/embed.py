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
import threading
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

DEFAULT = "wordllama"
_WORDLLAMA_DIM = 256  # the dimension of the weights the wheel ships (l2_supercat_256)


class EmbedderError(ValueError):
    """An embedder that cannot be loaded or does not match a database: one line saying why."""


class Embedder:
    """`name` and `dim` identify the vector space; `embed` maps texts (a sequence of str, or a
    pyarrow string array: what ingest hands over) to normalised float32 rows."""

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
    BY_SENTENCE_MIN = 256  # texts at a time from which `embed` goes sentence by sentence
    SENTENCE_CACHE = 65_536  # sentences whose sums are kept between calls (64 MB at 256 dimensions)
    WORD_CACHE = 65_536  # likewise words

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
        self._sentence_index: dict[str, int] = {}
        self._sentence_lock = threading.Lock()
        self._sentence_sums = np.zeros((0, dim), dtype=np.float32)
        self._word_index: dict[str, int] = {}
        self._word_sums = np.zeros((0, dim), dtype=np.float32)
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
        n = len(texts)
        if n < self.BY_SENTENCE_MIN or self._word_ids is None:
            return normalise(self._sums(_as_list(texts)))
        return normalise(self._sums_by_sentence(_as_arrow(texts)))

    def _sums(self, texts: Sequence[str]) -> np.ndarray:
        """The sum of each text's tokens' rows (a text's direction: WordLlama's mean, unnormalised)."""
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
        return out

    def _sums_by_sentence(self, texts) -> np.ndarray:
        """`_sums`, sentence by sentence: a text split after each ". " is the sum of its pieces
        (each "▁word" is tokenized alone: `token_ids`), so its sum is the sum of its sentences'
        sums, and a sentence that many captions share ("The road is dry.") is tokenized and
        summed once (bench_scale's 1.1M captions: 7.7 sentences each, 1 in 17 distinct in a batch
        of 20,000). A text that ends in a space or holds the separator goes through `_sums`."""
        import pyarrow as pa
        import pyarrow.compute as pc

        texts = pc.fill_null(texts, "")
        odd = pc.or_(pc.match_substring(texts, _SEP), pc.ends_with(texts, " ")).to_numpy(zero_copy_only=False)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if odd.any():
            out[odd] = self._sums(texts.filter(pa.array(odd)).to_pylist())
            texts = texts.filter(pa.array(~odd))
        sentences = pc.split_pattern(pc.replace_substring(texts, ". ", "." + _SEP), _SEP)
        counts = pc.list_value_length(sentences).to_numpy(zero_copy_only=False)  # >= 1: "" splits into [""]
        enc = pc.list_flatten(sentences).dictionary_encode()
        with self._sentence_lock:  # one embedder may serve several threads
            rows = self._sentence_rows(enc.dictionary.to_pylist())
            out[~odd] = _sum_rows(self._sentence_sums, rows[enc.indices.to_numpy(zero_copy_only=False)], counts)
        return out

    def _sums_by_word(self, texts: list[str]) -> np.ndarray:
        """`_sums` of texts made of words and single spaces, word by word: each word is one piece
        ("▁word"), so a text's sum is its words' sums, and each distinct word is tokenized once
        (cached). A text with two spaces in a row, a leading or trailing space or a "▁" goes
        through `_sums`."""
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = pa.array(texts, pa.string())
        odd = pc.or_(pc.or_(pc.match_substring(arr, "  "), pc.match_substring(arr, "\u2581")),
                     pc.or_(pc.starts_with(arr, " "), pc.ends_with(arr, " ")))
        odd = pc.or_(odd, pc.equal(arr, "")).to_numpy(zero_copy_only=False)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if odd.any():
            out[odd] = self._sums([t for t, o in zip(texts, odd) if o])
            arr = arr.filter(pa.array(~odd))
        if len(arr):
            words = pc.split_pattern(arr, " ")
            enc = pc.list_flatten(words).dictionary_encode()
            index = self._word_index
            vocab = enc.dictionary.to_pylist()
            if len(index) + len(vocab) > self.WORD_CACHE:
                index.clear()
                self._word_sums = np.zeros((0, self.dim), dtype=np.float32)
            missing = [w for w in vocab if w not in index]
            if missing:
                first = len(self._word_sums)
                self._word_sums = np.concatenate([self._word_sums, self._sums(missing)])
                index.update(zip(missing, range(first, first + len(missing))))
            rows = np.fromiter((index[w] for w in vocab), np.int64, len(vocab))
            out[~odd] = _sum_rows(self._word_sums, rows[enc.indices.to_numpy(zero_copy_only=False)],
                                  pc.list_value_length(words).to_numpy(zero_copy_only=False))
        return out

    def _sentence_rows(self, sentences: list[str]) -> np.ndarray:
        """The rows of `_sentence_sums` holding these sentences' sums (computed when missing)."""
        index = self._sentence_index
        if len(index) + len(sentences) > self.SENTENCE_CACHE:
            index.clear()
            self._sentence_sums = np.zeros((0, self.dim), dtype=np.float32)
        missing = [s for s in sentences if s not in index]
        if missing:
            first = len(self._sentence_sums)
            self._sentence_sums = np.concatenate([self._sentence_sums, self._sums_by_word(missing)])
            index.update(zip(missing, range(first, first + len(missing))))
        return np.fromiter((index[s] for s in sentences), np.int64, len(sentences))


_SEP = "\x1e"  # the record separator: after each ". " while splitting sentences


def _sum_rows(matrix: np.ndarray, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """out[i] = the sum of matrix[rows[j]] over the counts[i] entries of `rows` that are text i's
    (in order). Texts sorted by count, longest first, so that the k-th entries of the texts with
    more than k are one slice: max(counts) gathers instead of one reduction per text (~25x faster
    than np.add.reduceat over rows)."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    order = np.argsort(-counts, kind="stable")
    c, s = counts[order], starts[order]
    acc = np.zeros((len(counts), matrix.shape[1]), dtype=np.float32)
    for k in range(int(c.max()) if len(c) else 0):
        m = int(np.count_nonzero(c > k))
        acc[:m] += matrix[rows[s[:m] + k]]
    out = np.empty_like(acc)
    out[order] = acc
    return out


def _as_list(texts) -> list[str]:
    return texts.to_pylist() if hasattr(texts, "to_pylist") else list(texts)


def _as_arrow(texts):
    import pyarrow as pa

    return texts if isinstance(texts, pa.Array) else pa.array(list(texts), pa.string())


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
        v = self._model.encode(_as_list(texts), batch_size=64, convert_to_numpy=True, show_progress_bar=False)
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

    def __call__(self, captions, answers: Mapping[str, np.ndarray]) -> np.ndarray:
        """`captions`: a pyarrow string array (null: no caption); `answers`: answer text -> the
        indices (into `captions`) of the records stating it."""
        import pyarrow as pa
        import pyarrow.compute as pc

        e = self.embedder
        n = len(captions)
        out = np.zeros((n, e.dim), dtype=np.float32)
        has_caption = pc.fill_null(pc.greater(pc.binary_length(captions), 0), False).to_numpy(zero_copy_only=False)
        if has_caption.all():
            return e.embed(captions) if n else out
        if has_caption.any():
            out[has_caption] = e.embed(captions.filter(pa.array(has_caption)))
        if not answers:
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
