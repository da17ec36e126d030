"""avcap: post-train and evaluate video VLMs as autonomous-vehicle video captioners."""

__version__ = "0.1.0"
