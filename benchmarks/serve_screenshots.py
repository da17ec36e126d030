"""Screenshots of `avcap serve` (search, clip and review pages) taken by headless Chromium, for
docs/serve.md and the README.

    python3 benchmarks/serve_screenshots.py --out docs/img [--world /tmp/serve-world]

builds the small world of benchmarks/serve_data.py (12 rendered clips, their scenario database and
a review queue) unless --world holds one already, starts `avcap serve` on it (loopback, a free
port), and saves serve-search.png, serve-clip.png and serve-review.png. Needs Debian's `chromium`
and `chromium-driver` and `pip install selenium`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_data import build, build_review_queue  # noqa: E402  (benchmarks/ is not a package)

CHROMIUM = os.environ.get("AVCAP_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AVCAP_CHROMEDRIVER", "/usr/bin/chromedriver")


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """`avcap serve ARGS --port 0`; returns the process and the URL it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "avcap", "serve", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("avcap serve: "):
        proc.kill()
        raise RuntimeError(f"avcap serve did not start: {line}{proc.stderr.read()}")
    return proc, line.split()[-1]


def browser(width: int = 1280, height: int = 860):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
              "--autoplay-policy=no-user-gesture-required", f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _wait_video(drv, timeout: float = 10.0) -> None:
    """Until the page's video has its first frame (readyState >= 2)."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if drv.execute_script("const v = document.getElementById('video'); return v ? v.readyState : 4;") >= 2:
            return
        time.sleep(0.1)


def _wait_images(drv, timeout: float = 10.0) -> None:
    """Until every image of the page is decoded."""
    t = time.monotonic()
    js = "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);"
    while time.monotonic() - t < timeout and not drv.execute_script(js):
        time.sleep(0.1)
    time.sleep(0.3)


def _common(attribute: str, db_dir: Path) -> str:
    """The letter of `attribute` that most clips of the database have (so the filtered page is not empty)."""
    from avcap.scenarios.db import open_db

    values = open_db(db_dir).attribute_values(attribute)
    return max(values, key=lambda k: values[k]["count"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--world", type=Path, default=Path("/tmp/avcap-serve-world"))
    args = ap.parse_args()
    if not (args.world / "db").is_dir():
        build(args.world, videos=12, seed=4)
    else:  # a fresh review queue: the screenshot shows the first decisions
        build_review_queue(args.world / "synth" / "eval" / "AV_CAPTION", seed=4)
    dataset = args.world / "synth" / "eval" / "AV_CAPTION"
    proc, url = start_server("--db", str(args.world / "db"), "--bench", str(dataset))
    args.out.mkdir(parents=True, exist_ok=True)
    drv = browser()
    try:
        drv.get(url + f"?q=pedestrian+crossing+in+the+rain&where=weather%3D{_common('weather', args.world / 'db')}")
        _wait_images(drv)
        drv.save_screenshot(str(args.out / "serve-search.png"))
        first = drv.find_element("css selector", "#results .clip-id").text
        drv.get(url + "clip/" + first)
        _wait_video(drv)
        drv.execute_script("document.getElementById('video').play();")
        time.sleep(1.2)
        drv.execute_script("document.getElementById('video').pause();")
        drv.save_screenshot(str(args.out / "serve-clip.png"))
        drv.get(url + "review")
        for key in "vv":  # two decisions by keyboard (keep video), as a reviewer would; the page moves on
            before = drv.current_url
            drv.find_element("tag name", "body").send_keys(key)
            t = time.monotonic()
            while drv.current_url == before and time.monotonic() - t < 10:
                time.sleep(0.1)
        _wait_video(drv)
        drv.save_screenshot(str(args.out / "serve-review.png"))
    finally:
        drv.quit()
        proc.terminate()
        proc.wait(10)
    for name in ("serve-search.png", "serve-clip.png", "serve-review.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
