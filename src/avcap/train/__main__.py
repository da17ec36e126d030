"""`torchrun --nproc-per-node N -m avcap.train --config FILE` (or `python -m avcap.train`)."""

import typer

from avcap.train.loop import main

typer.run(main)
