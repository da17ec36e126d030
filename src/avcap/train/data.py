"""SFT samples: a curated conversation -> model inputs with labels on the assistant tokens only.

`encode` runs in DataLoader worker processes: it decodes the sampled frames with avcap.video (on the
CPU, or with `decoder="nvdec"` on the GPU's hardware decoder: `[avcap.train] decoder`), renders the
chat template, runs the model's processor on the pre-sampled frames (`do_sample_frames=False`,
`do_resize=False`, `video_metadata` from avcap.video — see avcap.models.qwen3_vl.tiny's "Processor
call") and builds the labels.

Label masking follows the chat template itself, not a model-specific token pattern: for each
assistant message i, the template rendered for `messages[:i]` with the generation prompt and for
`messages[:i+1]` bracket that message's text, [start, end) in characters, including the template's
end-of-turn token (`<|im_end|>` for Qwen) and excluding the whitespace after it — what cosmos-rl's
data packer labels (content + eos). Those characters are mapped to tokens through the tokenizer's
offsets on the unexpanded text, then onto the processor's expanded sequence (video placeholders
replaced by timestamps and patch tokens), which differs from the unexpanded one only inside the
vision span: tokens before it keep their index, tokens after it shift by the expansion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from avcap.data.blend import micro_batches
from avcap.data.sources import (
    ConversationError,
    CurateError,
    load_conversation,
    read_source,
)
from avcap.video import VideoError, load_video

# Heavy libraries (torch) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

IGNORE_INDEX = -100


# why a sample is skipped: the keys of the counts in train_log.jsonl and the checkpoint state
SKIP_REASONS = (
    "bad_meta_sample",       # a meta.json sample without a usable `conversation` field
    "missing_conversation",  # the conversation file meta.json names does not exist
    "bad_conversation",      # not readable, not JSON, or not a conversation (field named)
    "bad_video",             # unreadable, or not sampleable with [custom.vision] (aspect, size)
    "too_long",              # more tokens than policy.model_max_length
)


class SampleSkipped(Exception):
    """A sample that cannot be trained on: `reason` (one of SKIP_REASONS) and a message that names
    the file and field."""

    def __init__(self, message: str, reason: str):
        assert reason in SKIP_REASONS, reason
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # picklable across DataLoader worker processes
        return type(self), (str(self), self.reason)


# ----------------------------------------------------------------------------- label masking


def assistant_char_spans(processor, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (see module doc)."""
    full = processor.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        before = processor.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = processor.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise ValueError("the chat template does not render conversations as growing prefixes; cannot find assistant spans")
        end = len(upto.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    if not spans:
        raise ValueError("conversation has no assistant turn to train on")
    return full, spans


def label_mask(tokenizer, text: str, spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Token ids of `text` (no special tokens added) and, per token, whether it lies inside a span."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = []
    for s, e in enc["offset_mapping"]:
        mask.append(any(a <= s and e <= b and e > s for a, b in spans))
    return list(enc["input_ids"]), mask


def align_labels(unexpanded: list[int], mask: list[bool], expanded: list[int]) -> list[int]:
    """Labels for the processor's `expanded` ids: the masked tokens of `unexpanded`, placed by the
    common prefix / suffix of the two sequences (they differ only where vision tokens expand)."""
    n_u, n_x = len(unexpanded), len(expanded)
    p = 0
    while p < min(n_u, n_x) and unexpanded[p] == expanded[p]:
        p += 1
    s = 0
    while s < min(n_u, n_x) - p and unexpanded[n_u - 1 - s] == expanded[n_x - 1 - s]:
        s += 1
    labels = [IGNORE_INDEX] * n_x
    shift = n_x - n_u
    for j, m in enumerate(mask):
        if not m:
            continue
        if j < p:
            labels[j] = expanded[j]
        elif j >= n_u - s:
            labels[j + shift] = expanded[j + shift]
        else:
            raise ValueError("an assistant token falls inside the expanded vision span; cannot place its label")
    return labels


# ----------------------------------------------------------------------------- one sample


def video_factor(processor) -> int:
    vp = getattr(processor, "video_processor", None)
    patch, merge = getattr(vp, "patch_size", 16), getattr(vp, "merge_size", 2)
    return int(patch) * int(merge)


_SAMPLING_KEYS = ("nframes", "fps", "min_pixels", "max_pixels", "total_pixels", "min_frames", "max_frames")


def encode(processor, messages: list[dict[str, Any]], *, model_max_length: Optional[int] = None,
           decoder: str = "cpu") -> dict[str, Any]:
    """Model inputs (batch of one, torch tensors) plus `labels`; raises SampleSkipped. `decoder`:
    avcap.video.load_video's, "cpu" or "nvdec" (this process's current CUDA device)."""
    import torch

    videos, metas = [], []
    factor = video_factor(processor)
    for i, m in enumerate(messages):
        content = m.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "video":
                kw = {k: part[k] for k in _SAMPLING_KEYS if part.get(k) is not None}
                try:
                    vf = load_video(part["video"], factor=factor, decoder=decoder, **kw)
                except (VideoError, OSError) as exc:  # a VideoError's message starts with the video's path
                    raise SampleSkipped(f"[{i}].content[{j}].video: unusable video: {exc}", "bad_video") from None
                videos.append(vf.frames)
                metas.append(vf.metadata())
    text, spans = assistant_char_spans(processor, messages)
    kwargs: dict[str, Any] = dict(text=[text], return_tensors="pt")
    if videos:
        kwargs.update(videos=videos, video_metadata=metas, do_sample_frames=False, do_resize=False)
        vp = getattr(processor, "video_processor", None)
        if "cap_pixels_per_frame" in getattr(getattr(vp, "valid_kwargs", None), "__annotations__", {}):
            kwargs["cap_pixels_per_frame"] = False  # nothing is resized here; silences transformers' notice
    inputs = processor(**kwargs)
    expanded = inputs["input_ids"][0].tolist()
    if model_max_length is not None and len(expanded) > model_max_length:
        raise SampleSkipped(f"{len(expanded)} tokens > model_max_length {model_max_length}", "too_long")
    ids, mask = label_mask(processor.tokenizer, text, spans)
    labels = align_labels(ids, mask, expanded)
    out = {k: v for k, v in inputs.items()}
    out["labels"] = torch.tensor([labels], dtype=torch.long)
    return out


# ----------------------------------------------------------------------------- dataset


@dataclass
class SourceIndex:
    names: list[str]
    sizes: list[int]
    files: list[Optional[Path]]  # conversation files, sources concatenated in `names` order
    # global index -> why its meta.json entry names no conversation file (its `files` entry is None)
    problems: dict[int, str] = field(default_factory=dict)


def meta_sample_problem(sample: Any) -> Optional[str]:
    """What is wrong with one `samples[i]` entry of a meta.json ("<field>: <problem>"), or None."""
    if not isinstance(sample, dict):
        return f"expected an object, got {type(sample).__name__}"
    conv = sample.get("conversation")
    if conv is None:
        return "conversation: missing"
    if not isinstance(conv, str) or not conv:
        return f"conversation: expected a file path (a non-empty string), got {conv!r}"
    return None


def index_sources(dataset_root: str | Path, subdirectories: Sequence[str], meta_file: str = "meta.json", *,
                  skip_bad: bool = False) -> SourceIndex:
    """The curated sources' conversation files in global sample order. A meta.json sample without a
    usable `conversation` raises CurateError, or with `skip_bad` keeps its place (None in `files`)
    and its reason in `problems` (the trainer skips and counts it)."""

    index = SourceIndex([], [], [])
    for name in subdirectories:
        src = read_source(dataset_root, name, meta_file)
        index.names.append(name)
        index.sizes.append(len(src.samples))
        for i, sample in enumerate(src.samples):
            problem = meta_sample_problem(sample)
            if problem is None:
                index.files.append(src.conversation_path(i))
                continue
            line = f"{src.root / meta_file}: samples[{i}].{problem}" if problem.startswith("conversation") \
                else f"{src.root / meta_file}: samples[{i}]: {problem}"
            if not skip_bad:
                raise CurateError(line)
            index.problems[len(index.files)] = line
            index.files.append(None)
    return index


class SFTDataset:
    """Map-style dataset over curated conversations: item i -> encoded sample dict, or a dict with
    `skipped` (reason) when the sample cannot be used; a torch `Dataset` by duck typing. Picklable
    (DataLoader workers started with "spawn" get a copy). `decoder`: see `encode`."""

    def __init__(self, index: SourceIndex, processor, vision=None, model_max_length: Optional[int] = None,
                 decoder: str = "cpu"):
        self.index, self.processor, self.vision, self.model_max_length = index, processor, vision, model_max_length
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.index.files)

    def conversation(self, i: int) -> list[dict[str, Any]]:
        """Sample i's conversation; raises SampleSkipped (missing, unreadable or malformed file)."""

        file = self.index.files[i]
        if file is None:
            raise SampleSkipped(self.index.problems.get(i, f"sample {i}: no conversation file"), "bad_meta_sample")
        try:
            return load_conversation(file, vision=self.vision)
        except FileNotFoundError:
            raise SampleSkipped(f"{file}: no such file (named by its source's meta.json)", "missing_conversation") from None
        except ConversationError as exc:
            raise SampleSkipped(str(exc), "bad_conversation") from None
        except OSError as exc:
            raise SampleSkipped(f"{file}: unreadable ({exc.strerror or exc})", "bad_conversation") from None

    def __getitem__(self, i: int) -> dict[str, Any]:
        """The encoded sample, or `{"index", "skipped": message, "reason": one of SKIP_REASONS}`."""
        try:
            messages = self.conversation(i)
            try:
                sample = encode(self.processor, messages, model_max_length=self.model_max_length,
                                decoder=self.decoder)
            except SampleSkipped as exc:  # name the conversation file in front of the field
                raise SampleSkipped(f"{self.index.files[i]}: {exc}", exc.reason) from None
        except SampleSkipped as exc:
            return {"index": i, "skipped": str(exc), "reason": exc.reason}
        sample["index"] = i
        return sample


# ----------------------------------------------------------------------------- batching

_SEQ_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids")


class Collator:
    """Right-pads sequence tensors, concatenates vision tensors; skipped samples are listed."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        kept = [s for s in samples if "skipped" not in s]
        out: dict[str, Any] = {
            "indices": [s["index"] for s in kept],
            "skipped": [(s["index"], s["reason"], s["skipped"]) for s in samples if "skipped" in s],
        }
        if not kept:
            return out
        length = max(s["input_ids"].shape[1] for s in kept)
        for key in _SEQ_KEYS:
            if key not in kept[0]:
                continue
            fill = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX}.get(key, 0)
            rows = []
            for s in kept:
                t = s[key]
                pad = torch.full((1, length - t.shape[1]), fill, dtype=t.dtype)
                rows.append(torch.cat([t, pad], dim=1))
            out[key] = torch.cat(rows, dim=0)
        for key in kept[0]:
            if key in _SEQ_KEYS or key == "index":
                continue
            if all(isinstance(s.get(key), torch.Tensor) for s in kept):
                out[key] = torch.cat([s[key] for s in kept], dim=0)
        return out


def conversation_sizes(files: Sequence[Path]) -> list[int]:
    """Bytes of each conversation file: the length key that groups a step's micro-batches. A file
    that cannot be read counts 0 here; loading it reports and skips it like any bad sample."""
    sizes = []
    for f in files:
        try:
            sizes.append(f.stat().st_size if f is not None else 0)
        except OSError:
            sizes.append(0)
    return sizes


class StepBatches:
    """DataLoader `batch_sampler`: this rank's micro-batch index lists for steps [start, end)."""

    def __init__(self, plan, *, rank: int, world_size: int, mini_batch: int, start_step: int, end_step: int,
                 lengths=None):
        self.plan, self.rank, self.world_size, self.mini_batch = plan, rank, world_size, mini_batch
        self.start_step, self.end_step, self.lengths = start_step, end_step, lengths
        self.per_step = -(-plan.global_batch // world_size // mini_batch)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.per_step

    def __iter__(self):
        return micro_batches(self.plan, rank=self.rank, world_size=self.world_size, mini_batch=self.mini_batch,
                             start_step=self.start_step, end_step=self.end_step, lengths=self.lengths)
