"""Training-data curation: raw sources -> cosmos-rl conversations, the blend sampler, the preview.

    curate(cfg, out)        -> CurationReport      (avcap.data.sources)
    preview(dataset_root)   -> (png, mp4)          (avcap.data.preview_grid)
    BlendSampler                                   (avcap.data.blend)
"""

from __future__ import annotations

from typing import Any

__all__ = ["curate", "preview"]


def __getattr__(name: str) -> Any:  # lazy: `import avcap.data.schemas` stays light
    if name == "curate":
        from avcap.data.sources import curate  # lazy: `import avcap.data` stays light

        return curate
    if name == "preview":
        from avcap.data.preview_grid import (
            preview,  # lazy: `import avcap.data` stays light
        )

        return preview
    raise AttributeError(name)
