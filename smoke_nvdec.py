import sys, time
import numpy as np
from pathlib import Path
from avcap import video as V
from avcap.config import Vision
from avcap.engines.frames import FrameLoader

if __name__ == "__main__":
    d = Path("/tmp/smoke"); d.mkdir(exist_ok=True)
    src = d / "c.mp4"
    if not src.exists():
        rng = np.random.default_rng(0)
        V.write_video(src, rng.integers(0, 255, (90, 360, 640, 3), dtype=np.uint8), 30, gop=30)
    names = []
    for k in range(12):
        p = d / f"v{k}.mp4"
        if not p.exists():
            p.symlink_to(src)
        names.append(str(p))
    pt = int(sys.argv[1])
    loader = FrameLoader(Vision(nframes=8), 32, workers=2, processes=True, decoder="nvdec", process_threads=pt)
    t = time.time()
    futs = [loader._future({"video": n}) for n in names]
    print("pt", pt, [f.result().frames.shape[0] for f in futs], round(time.time() - t, 1), loader.decoded_by, flush=True)
    loader.close()
