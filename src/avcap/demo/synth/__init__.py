"""The procedural dash-cam world: `SceneRecord` ground truth, rendering and annotations.

`avcap synth --out DIR` writes the layout of docs/formats.md ("Synthetic world"):
`synthesize(out_dir, ...)` is the same as a function. `text_corpus(...)` yields every kind of text
the world emits (captions, the three annotation JSONs, LingoQA QA) for tokenizer training.
"""

from __future__ import annotations

from collections.abc import Iterator

from avcap.demo.synth.annotate import texts_for
from avcap.demo.synth.cli import synthesize as _synthesize
from avcap.demo.synth.scene import SceneRecord
from avcap.demo.synth.world import sample_scene as _sample

__all__ = ["SceneRecord", "sample_scene", "synthesize", "text_corpus"]


def sample_scene(seed: int, **kwargs) -> SceneRecord:
    return _sample(seed, **kwargs)


def text_corpus(n_scenes: int = 2000, seed: int = 0) -> Iterator[str]:
    """Texts of `n_scenes` sampled worlds (no rendering; ~20 ms per scene): for each scene the
    reference caption, the human / CV / reasoning-SFT annotation JSON strings and its LingoQA
    question-answer texts. Deterministic for (n_scenes, seed)."""

    for i in range(n_scenes):
        yield from texts_for(_sample(_corpus_seed(seed, i)))


def _corpus_seed(seed: int, i: int) -> int:
    # disjoint from the seeds `synthesize` uses for videos (those are below 2**31)
    return (1 << 40) + seed * 1_000_003 + i


def synthesize(*args, **kwargs):
    return _synthesize(*args, **kwargs)
