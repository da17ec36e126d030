"""The procedural dash-cam world: `SceneRecord` ground truth, rendering and annotations.

`avcap synth --out DIR` writes the layout of docs/formats.md ("Synthetic world").
"""

from avcap.synth.scene import SceneRecord

__all__ = ["SceneRecord"]
