"""Training-data curation: raw sources -> cosmos-rl conversations, the blend sampler, the preview.

    curate(cfg, out)        -> CurationReport      (avcap.curate.sources)
    preview(dataset_root)   -> (png, mp4)          (avcap.curate.preview_grid)
    BlendSampler                                   (avcap.curate.blend)
"""

from __future__ import annotations

from typing import Any

__all__ = ["curate", "preview"]


def __getattr__(name: str) -> Any:  # lazy: `import avcap.curate.schemas` stays light
    if name == "curate":
        from avcap.curate.sources import curate

        return curate
    if name == "preview":
        from avcap.curate.preview_grid import preview

        return preview
    raise AttributeError(name)
