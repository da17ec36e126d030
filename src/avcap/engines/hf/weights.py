"""A checkpoint's tensors read onto the device while transformers is still being imported.

A fresh `avcap infer` imports transformers' Qwen3-VL classes for 5-14 s (benchmarks/runs/gpu_run63,
gpu_run65) and only then reads the weights onto the GPU (3.4-8.4 s at 8B). Reading them needs torch
and safetensors alone, so `EarlyWeights` reads them on a thread during the imports. transformers'
own loading then takes them as its `state_dict`: the same key conversions, tied weights, dtype
rules and checks as a load from the files; only the reading moved.

On a CUDA device the files are read by `read_checkpoint`: a few threads read byte ranges straight
into pinned host buffers (page cache to pinned memory, the GIL released) and copy them to the GPU
asynchronously, each thread on a stream of its own, instead of safetensors' one thread of pageable
copies (~2.3 GB/s on the H100 box: 7 s for the 8B checkpoint, gpu_run68).

It is used only where that gives the same model as a load from the directory (`why_not` says why
not otherwise): a local directory of safetensors files, no quantization, every floating tensor
already in the run's dtype (no second copy in another dtype on the device), and transformers 5
(4.x loads a `state_dict` onto a device only through accelerate); on a GPU also room for the
checkpoint twice, since transformers' loader reserves the model's size again before it places it.

    early = EarlyWeights.start(path, device="cuda:0", dtype=torch.bfloat16)   # after `import torch`
    ...                                                                       # import transformers
    model = from_state_dict(path, early.result(), dtype=..., device_map=..., attn_implementation=...)
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# safetensors' dtype names of the floating types, by torch's name
_FLOATING = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "F8_E4M3": "float8_e4m3fn",
             "F8_E5M2": "float8_e5m2"}
# every safetensors dtype torch has, by torch's name
_DTYPES = {**_FLOATING, "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
           "U16": "uint16", "U32": "uint32", "U64": "uint64"}
READ_THREADS = 4  # readers of read_checkpoint (each with its stream and two staging buffers)
READ_CHUNK = 32 * 1024 * 1024  # bytes per staging buffer


def safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(where the data starts, {name: {"dtype", "shape", "data_offsets"}}) of a safetensors file: an
    8-byte little-endian header size, then that many bytes of JSON (its `__metadata__` left out)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, header


def read_checkpoint(files: list[Path], device: str, *, threads: int = READ_THREADS,
                    chunk: int = READ_CHUNK) -> dict[str, Any]:
    """Every tensor of `files` on `device`, as safetensors' `load_file` gives them (same names, dtypes,
    shapes and bytes). `threads` readers take byte ranges of at most `chunk` bytes in file order, read
    each into a staging buffer (pinned on CUDA; two per reader, so a read overlaps the previous copy)
    and copy it into the tensor's bytes on the device, each reader on a CUDA stream of its own; all
    copies are done when this returns. Raises ValueError for a dtype torch lacks."""
    import torch

    tensors: dict[str, Any] = {}
    work: "queue.SimpleQueue[Optional[tuple[Path, int, int, Any, int]]]" = queue.SimpleQueue()
    for path in files:
        start, header = safetensors_header(path)
        for name, meta in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if meta["dtype"] not in _DTYPES:
                raise ValueError(f"{path.name}: tensor {name!r} has dtype {meta['dtype']}, which torch lacks")
            b, e = meta["data_offsets"]
            raw = torch.empty(e - b, dtype=torch.uint8, device=device)
            tensors[name] = (raw, getattr(torch, _DTYPES[meta["dtype"]]), meta["shape"])
            for off in range(0, e - b, chunk):
                work.put((path, start + b + off, min(chunk, e - b - off), raw, off))
    cuda = str(device).startswith("cuda")
    errors: list[BaseException] = []

    def reader() -> None:
        stream = None
        fds: dict[Path, int] = {}
        try:
            stream = torch.cuda.Stream(device) if cuda else None
            bufs = [torch.empty(chunk, dtype=torch.uint8, pin_memory=cuda) for _ in range(2)]
            done = [None, None]  # each buffer's last copy (a CUDA event)
            i = 0
            while (item := work.get()) is not None:
                path, pos, n, raw, off = item
                if done[i] is not None:
                    done[i].synchronize()  # the buffer's previous copy has left it
                view = memoryview(bufs[i].numpy())[:n]
                fd = fds.get(path)
                if fd is None:
                    fd = fds[path] = os.open(path, os.O_RDONLY)
                got = 0
                while got < n:
                    k = os.preadv(fd, [view[got:]], pos + got)
                    if k == 0:
                        raise OSError(f"{path}: ends before byte {pos + n} (a truncated checkpoint)")
                    got += k
                if cuda:
                    with torch.cuda.stream(stream):
                        raw[off:off + n].copy_(bufs[i][:n], non_blocking=True)
                        done[i] = torch.cuda.Event()
                        done[i].record(stream)
                else:
                    raw[off:off + n].copy_(bufs[i][:n])
                i = 1 - i
        except BaseException as exc:  # noqa: BLE001 — raised by the caller
            errors.append(exc)
            while work.get() is not None:  # the others stop at their sentinels
                pass
        finally:
            if stream is not None:  # no copy still writing when the tensors are handed out, or freed
                stream.synchronize()
            for fd in fds.values():
                os.close(fd)

    n_threads = max(1, min(threads, work.qsize()))
    for _ in range(n_threads):
        work.put(None)
    pool = [threading.Thread(target=reader, name=f"avcap-weights-read-{k}", daemon=True) for k in range(n_threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return {name: raw.view(dtype).reshape(shape) for name, (raw, dtype, shape) in tensors.items()}


def checkpoint_files(model_dir: Path) -> Optional[list[Path]]:
    """The safetensors files of a local checkpoint directory (one file, or the shards its index
    names), or None where it has none."""
    if (model_dir / INDEX).is_file():
        shards = sorted(set(json.loads((model_dir / INDEX).read_text())["weight_map"].values()))
        return [model_dir / s for s in shards]
    if (model_dir / SINGLE).is_file():
        return [model_dir / SINGLE]
    return None


def why_not(model_dir: str | Any, dtype: Any) -> Optional[str]:
    """Why the weights of `model_dir` cannot be read early for a run in `dtype` (a torch dtype),
    or None where they can."""
    try:
        major = int(metadata.version("transformers").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        major = 0
    if major < 5:
        return "transformers 4 loads a state dict onto a device only through accelerate"
    path = Path(model_dir) if isinstance(model_dir, (str, Path)) else None
    if path is None or not path.is_dir():
        return "not a local directory"
    try:
        files = checkpoint_files(path)
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError, KeyError) as exc:
        return f"unreadable index or config ({type(exc).__name__}: {exc})"
    if not files:
        return "no safetensors files"
    if config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config"):
        return "a quantized checkpoint"
    from safetensors import safe_open

    want = str(dtype).removeprefix("torch.")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                kinds = {sf.get_slice(k).get_dtype() for k in sf.keys()}
        except Exception as exc:  # noqa: BLE001 — the load from the files says what is wrong with it
            return f"{f.name}: unreadable ({type(exc).__name__})"
        other = sorted(_FLOATING[k] for k in kinds if k in _FLOATING and _FLOATING[k] != want)
        if other:
            return f"{f.name} holds {', '.join(other)} tensors, the run is {want}"
    return None


def _no_room_twice(files: list[Path], device: str) -> Optional[str]:
    """transformers' loading with a device map first reserves the model's size on the GPU
    (`caching_allocator_warmup`); with the tensors already there the checkpoint is on the device
    twice for a moment. Why not, where that does not fit in the free memory (with 2 GiB to spare)."""
    import torch

    need = 2 * sum(f.stat().st_size for f in files) + 2 * 1024**3
    free = torch.cuda.mem_get_info(torch.device(device))[0]
    if need > free:
        return (f"the checkpoint twice ({need / 1024**3:.1f} GiB with 2 to spare) does not fit in the "
                f"device's free {free / 1024**3:.1f} GiB")
    return None


class EarlyWeights:
    """Every tensor of a checkpoint, read onto `device` on a thread of its own."""

    def __init__(self, files: list[Path], device: str):
        self.files, self.device = files, device
        self.read_s: Optional[float] = None  # the reading's seconds, once done
        self.waited_s: Optional[float] = None  # how long `result` waited for it
        self.chunked = str(device).startswith("cuda")  # read_checkpoint (on the host safetensors maps the files)
        self.fallback: Optional[str] = None  # why the chunked reader gave way to safetensors' own
        self._done = threading.Event()
        self._tensors: dict[str, Any] = {}
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._read, name="avcap-weights", daemon=True)

    @classmethod
    def start(cls, model_dir: str | Any, device: str, dtype: Any) -> tuple[Optional["EarlyWeights"], Optional[str]]:
        """(a started reader, None), or (None, why not) where the weights cannot be read early.
        Needs torch and safetensors imported (the caller's imports, under its import lock)."""
        reason = why_not(model_dir, dtype)
        files = checkpoint_files(Path(model_dir)) if reason is None else None
        if reason is None and str(device).startswith("cuda"):
            reason = _no_room_twice(files, device)
        if reason is not None:
            return None, reason
        reader = cls(files, device)
        reader._thread.start()
        return reader, None

    def _read(self) -> None:
        from safetensors import safe_open

        t0 = time.perf_counter()
        try:
            if self.chunked:
                try:
                    self._tensors = read_checkpoint(self.files, self.device)
                    return
                except Exception as exc:  # noqa: BLE001 — safetensors reads it, or says what is wrong
                    self.fallback = f"{type(exc).__name__}: {exc}"
                    self._tensors = {}
                    warnings.warn(f"avcap.engines.hf.weights: the chunked reader failed ({self.fallback}); "
                                  "reading the weights with safetensors")
            for f in self.files:
                with safe_open(str(f), framework="pt", device=self.device) as sf:
                    for k in sf.keys():
                        self._tensors[k] = sf.get_tensor(k)
        except BaseException as exc:  # noqa: BLE001 — handed to whoever waits for the result
            self._error = exc
            self._tensors = {}
        finally:
            self.read_s = round(time.perf_counter() - t0, 3)
            self._done.set()

    def result(self) -> dict[str, Any]:
        """The tensors by checkpoint key (waits for the reading: `waited_s`); raises what the reading
        raised."""
        t0 = time.perf_counter()
        self._done.wait()
        self.waited_s = round(time.perf_counter() - t0, 3)
        if self._error is not None:
            raise self._error
        tensors, self._tensors = self._tensors, {}  # the model holds them from here on
        return tensors


def from_state_dict(model_dir: str | Any, tensors: dict[str, Any], **kwargs: Any) -> Any:
    """What `AutoModelForImageTextToText.from_pretrained(model_dir, **kwargs)` builds, from tensors
    already read: the directory's config and generation config, `tensors` as the state dict."""
    from transformers import AutoConfig, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    config = AutoConfig.from_pretrained(model_dir)
    if (Path(model_dir) / "generation_config.json").is_file():
        kwargs["generation_config"] = GenerationConfig.from_pretrained(model_dir)
    model_class = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)]
    model = model_class.from_pretrained(None, config=config, state_dict=tensors, **kwargs)
    model.config.name_or_path = model.name_or_path = str(model_dir)  # from_pretrained wrote "None" there
    return model
