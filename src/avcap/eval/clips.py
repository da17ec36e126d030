"""A fleet's clip set: the clips `avcap label` labels (a `kind = "clips"` dataset).

Three shapes, one result (clip id -> path, and one line per input that cannot be used):

- a folder: every video file (and frame directory) under it, recursively; the clip id is the path
  relative to the folder without its suffix (`2026-11/cam0_0412`);
- a manifest `.txt`: one path per line (`#` starts a comment);
- a manifest `.jsonl` / `.csv`: `path` and an optional `clip_id` per line / row.

Manifest paths are relative to the manifest's directory; a manifest's clip id defaults to the
file's name without its suffix. A listed file that does not exist is still a clip: labelling it
writes an error record, so the set stays complete and the reason is on file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

from avcap.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES

MANIFEST_SUFFIXES = (".txt", ".jsonl", ".csv")


class ClipSetError(ValueError):
    """A clip set that cannot be read at all (missing folder or manifest): one line naming it."""


def clip_set(root: Path, manifest: Optional[Path] = None) -> tuple[dict[str, Path], list[str]]:
    """(clip id -> path in id order, problems) of a folder, or of a manifest when one is given."""
    if manifest is not None:
        return _from_manifest(manifest)
    if not root.is_dir():
        raise ClipSetError(f"{root}: no such folder of clips")
    clips: dict[str, Path] = {}
    problems: list[str] = []
    for path in _walk(root):
        cid = path.relative_to(root).with_suffix("").as_posix() if path.is_file() else path.relative_to(root).as_posix()
        if cid in clips:
            problems.append(f"{path}: clip id {cid!r} is also {clips[cid]}'s; this one is skipped")
            continue
        clips[cid] = path
    if not clips:
        raise ClipSetError(f"{root}: no clips ({', '.join(VIDEO_SUFFIXES)} files or frame directories)")
    return dict(sorted(clips.items())), problems


def _walk(root: Path):
    """Video files and frame directories (a directory that holds image files) under `root`."""
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()):
                yield p
            else:
                yield from _walk(p)
        elif p.suffix.lower() in VIDEO_SUFFIXES:
            yield p


def _from_manifest(manifest: Path) -> tuple[dict[str, Path], list[str]]:
    if manifest.suffix.lower() not in MANIFEST_SUFFIXES:
        raise ClipSetError(f"{manifest}: a manifest is {', '.join(MANIFEST_SUFFIXES)}")
    try:
        text = manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClipSetError(f"{manifest}: no such manifest") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipSetError(f"{manifest}: cannot read ({exc})") from None
    rows, problems = _manifest_rows(manifest, text)
    clips: dict[str, Path] = {}
    for where, path_text, cid in rows:
        if not path_text:
            problems.append(f"{where}: path: empty")
            continue
        path = Path(path_text).expanduser()
        path = path if path.is_absolute() else manifest.parent / path
        cid = cid or path.stem
        if cid in clips:
            problems.append(f"{where}: clip_id: {cid!r} is listed twice; this one is skipped")
            continue
        clips[cid] = path
    if not clips:
        raise ClipSetError(f"{manifest}: lists no clips" + (f" ({problems[0]})" if problems else ""))
    return clips, problems


def _manifest_rows(manifest: Path, text: str) -> tuple[list[tuple[str, str, Optional[str]]], list[str]]:
    """(where, path, clip id or None) per listed clip, and the lines that cannot be read."""
    rows: list[tuple[str, str, Optional[str]]] = []
    problems: list[str] = []
    kind = manifest.suffix.lower()
    if kind == ".csv":
        reader = csv.DictReader(text.splitlines())
        if "path" not in (reader.fieldnames or []):
            raise ClipSetError(f"{manifest}: no `path` column (columns: {', '.join(reader.fieldnames or []) or 'none'})")
        for n, row in enumerate(reader, start=2):
            rows.append((f"{manifest}:{n}", (row.get("path") or "").strip(), (row.get("clip_id") or "").strip() or None))
        return rows, problems
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{manifest}:{n}"
        if kind == ".txt":
            rows.append((where, line, None))
            continue
        try:
            obj: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
            problems.append(f"{where}: path: expected an object with a string `path`")
            continue
        cid = obj.get("clip_id")
        if cid is not None and (not isinstance(cid, str) or not cid.strip()):
            problems.append(f"{where}: clip_id: expected a non-empty string")
            continue
        rows.append((where, obj["path"].strip(), cid.strip() if cid else None))
    return rows, problems
