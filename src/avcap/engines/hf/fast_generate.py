"""Fast generation for Qwen3-VL: shared video prefixes, a static KV cache, graph-captured decode.

`FastGenerator.generate(inputs, row_videos, sampling, ...)` takes exactly what the transformers
engine would hand `model.generate` (the processor's left-padded batch) and returns the same new
tokens, faster:

1. **One prefill per video prefix.** Rows that show the same video (the 12 MCQ questions of one
   clip) share the longest common prefix of their token ids (system prompt, video, anything common
   after it). Each distinct prefix goes through transformers' own forward once (vision tower,
   DeepStack, mRoPE positions from `get_rope_index`), `prefill_batch` prefixes per call, and its KV
   is copied into every row that shares it. A row alone in its group (a caption request) has its
   whole prompt but the last token as prefix. mRoPE positions and the vision tower's grid-derived
   inputs are computed on the host (avcap.models.qwen3_vl.host_vision), so the call does not stop to read
   sizes back from the GPU.
2. **The rest of every row** (the question text, the generation prompt) is run by `text_forward`,
   a transcription of Qwen3-VL's text decoder layer (same modules, same weights, same math) over a
   preallocated cache: keys and values of all rows live in one tensor per layer, rows right-aligned
   so that every row's next token goes to the same slot; `valid` marks the slots a row may attend.
   Text positions after the video continue from the prefix's largest mRoPE position (all three
   axes equal), exactly as `get_rope_index` and `generate` number them.
3. **Decode** repeats one-token `text_forward` steps. A step attends over the cache only up to
   the end of the KV_BLOCK-slot block holding its own slot (the rest is masked anyway), so early
   steps read less of the cache. On CUDA the step is captured as a CUDA graph once per batch shape
   and block count (static inputs: token, position, slot; 3 graphs for a 256-token caption) and
   replayed, so a step costs the GPU's time instead of ~700 kernel launches from Python; on CPU it
   runs eagerly (same code).

Layout of one batch in the cache (S slots, multiple of 256 so graphs are reused across batches):

    [ pad | prefix of the row's group ][ pad | suffix of the row ][ new tokens ...      ]
    0                                  Pp                         P                     S

Grouped-query attention runs without repeating K/V: the `groups` query heads that share a KV head
are folded into the query length (B, kv_heads, groups * L, D), so scaled_dot_product_attention reads
each KV head once (the masked, memory-efficient kernel on CUDA). `decode_attention` picks another
kernel for the decode steps: FlexAttention ("flex") or avcap's Triton split-KV kernel ("triton",
avcap.engines.hf.triton_decode, which scores a KV head's query heads together as it reads the head).

Sampling follows transformers' order: min-new-tokens (EOS masked), presence penalty (the engine's
vLLM semantics), then temperature, top-k, top-p with transformers' own warpers, softmax and
`torch.multinomial`'s draw on the global RNG (the engine seeds it per batch; `draw` makes the same
draw without multinomial's host syncs). Rows that finished emit the pad token, like `generate`.
The decode loop never waits for the GPU: whether every row has finished is copied to the host
asynchronously every few steps and read one check later (`StopCheck`), so the GPU never runs dry
while the host catches up (a stop comes a few steps late; those steps emit pad).
`repetition_penalty != 1` is not handled here: the engine then uses plain `generate`. Greedy
outputs equal `generate`'s (tests/test_engine_fast.py, tiny model, fp32); in bf16 the logits agree
within bf16 rounding (attention sums in a different order).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from avcap.core.verdicts import passed_before, remember_pass, source_digest
from avcap.models.qwen3_vl import host_vision
from avcap.models.qwen3_vl.host_vision import HostVision
from avcap.models.qwen3_vl.text import (
    NotSupported,
    attention_inputs,
    attention_output_and_mlp,
    check_layer_against_library,
    layer_check_key,
    linear_patch_embed,
    prefix_layers,
    replaced,
    rotary,
    supports,
    text_forward,
    to_device,
)

# Heavy libraries (torch, transformers) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

__all__ = ["FastGenerator", "NotSupported", "SamplingSpec", "linear_patch_embed", "supports", "text_forward"]

DECODE_ATTENTION = ("auto", "sdpa", "flex", "triton")  # auto: triton on a CUDA device, else sdpa
PREFIX_LAYERS = ("transcribed", "library")
SLOT_ALIGN = 256
LAYER_CHECK = "qwen3-vl-text-layer"  # the verdicts' names in avcap.core.verdicts
HOST_VISION_CHECK = "qwen3-vl-host-vision"
KV_BLOCK = 128  # a decode step attends over whole blocks of cache slots, up to its own (one graph each)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


# ----------------------------------------------------------------------------- sampling


@dataclass
class SamplingSpec:
    temperature: float = 0.0
    top_k: int = -1
    top_p: float = 1.0
    presence_penalty: float = 0.0
    min_new_tokens: int = 0

    @classmethod
    def from_sampling(cls, s, min_new_tokens: int = 0) -> "SamplingSpec":
        if getattr(s, "repetition_penalty", 1.0) != 1.0:
            raise NotSupported("repetition_penalty")
        return cls(temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p),
                   presence_penalty=float(s.presence_penalty or 0.0), min_new_tokens=int(min_new_tokens))

    def warpers(self):
        """transformers' own warpers, in generate's order (only when sampling)."""
        from transformers import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        out = []
        if self.temperature != 1.0:
            out.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k > 0:
            out.append(TopKLogitsWarper(top_k=self.top_k, min_tokens_to_keep=1))
        if self.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=self.top_p, min_tokens_to_keep=1))
        return out


def draw(probs):
    """One token per row of probabilities (B, V): `torch.multinomial(probs, 1)` without its host
    syncs. For one sample torch draws argmax(probs / q) with q ~ Exp(1), after two `.item()`
    checks of the probabilities that drain the GPU queue once per decode step; these are the same
    draws from the same generator state (tested), the checks left out: the probabilities here come
    from a softmax (finite, non-negative, each row summing to 1)."""
    import torch

    q = torch.empty_like(probs).exponential_(1)
    return torch.div(probs, q, out=q).argmax(dim=-1)


TIE_MARGIN = 32  # extra top-k candidates kept for logits tied with the k-th (bf16 logits tie often)


class Chooser:
    """Next tokens from float32 logits (B, V), generate's processors in generate's order.

    The same distribution as transformers' warpers with less work on a 152k vocabulary: the
    presence penalty is one subtraction of a (B, V) tensor that holds the penalty at seen tokens;
    with top-k (and top-p) only the top k + TIE_MARGIN candidates are sorted and filtered (every
    other token is -inf after top-k, so transformers' full-vocabulary sort only moves -inf values,
    which add exactly 0 to the softmax and its cumulative sum); the kept probabilities are scattered
    into a zero (B, V) tensor and drawn over the full vocabulary as `torch.multinomial` draws
    (`draw`), so the random draws are those of `generate`. Logits tied with the k-th beyond the
    margin are dropped (transformers keeps every tie). Top-p without top-k uses transformers' own warper."""

    def __init__(self, spec: SamplingSpec, batch: int, vocab: int, eos: Sequence[int], pad: int, device):
        import torch

        self.spec = spec
        self.eos = torch.tensor(sorted(set(int(e) for e in eos)), dtype=torch.long, device=device)
        self.pad = int(pad)
        self.sample = spec.temperature > 0
        self.top_k = min(spec.top_k, vocab) if spec.top_k > 0 else 0
        self.candidates = min(vocab, self.top_k + TIE_MARGIN)
        self.warpers = [] if not self.sample or self.top_k else spec.warpers()
        self.penalty = (torch.zeros(batch, vocab, dtype=torch.float32, device=device)
                        if spec.presence_penalty else None)
        self.unfinished = torch.ones(batch, dtype=torch.bool, device=device)

    def __call__(self, logits, step: int):
        import torch

        if step < self.spec.min_new_tokens and self.eos.numel():
            logits.index_fill_(1, self.eos, float("-inf"))
        if self.penalty is not None:
            logits = logits - self.penalty
        if self.sample:
            if self.top_k:
                if self.spec.temperature != 1.0:
                    logits = logits / self.spec.temperature
                probs = self._top_k_top_p(logits)
            else:  # transformers' own warpers, temperature included
                for w in self.warpers:
                    logits = w(None, logits)
                probs = torch.softmax(logits, dim=-1)
            tok = draw(probs)
        else:
            tok = torch.argmax(logits, dim=-1)
        tok = torch.where(self.unfinished, tok, torch.full_like(tok, self.pad))
        if self.eos.numel():
            self.unfinished &= ~torch.isin(tok, self.eos)
        if self.penalty is not None:
            self.penalty.scatter_(1, tok[:, None], self.spec.presence_penalty)
        return tok

    def _top_k_top_p(self, logits):
        """Probabilities (B, V) after transformers' TopK then TopP warpers (min_tokens_to_keep 1)."""
        import torch

        vals, idx = torch.topk(logits, self.candidates, dim=-1)  # descending
        kth = vals[:, self.top_k - 1: self.top_k]
        vals = vals.masked_fill(vals < kth, float("-inf"))
        if self.spec.top_p < 1.0:
            asc = vals.flip(-1)  # transformers sorts ascending and removes the low tail
            cum = torch.softmax(asc, dim=-1).cumsum(dim=-1)
            remove = cum <= 1 - self.spec.top_p
            remove[:, -1] = False
            vals = asc.masked_fill(remove, float("-inf")).flip(-1)
        return torch.zeros_like(logits).scatter_(1, idx, torch.softmax(vals, dim=-1))


class StopCheck:
    """Whether every row has finished, as the decode loop asks every few steps.

    With `lag`, a check never waits for the GPU: it queues an asynchronous copy of the flag to the
    host and answers with the flag the previous check queued (by then long computed), so the loop
    stops one check late (those steps emit pad) but the GPU's queue never runs dry while the host
    catches up. Without `lag` it answers at once (short generations, where a wasted step costs
    more than a wait)."""

    def __init__(self, unfinished, *, lag: bool):
        import torch

        self.unfinished = unfinished
        self.lag = lag
        pinned = lag and unfinished.is_cuda
        self.host = torch.ones(1, dtype=torch.bool, pin_memory=pinned)
        self.event = torch.cuda.Event() if pinned else None
        self.queued = False

    def all_finished(self) -> bool:
        if not self.lag:
            return not bool(self.unfinished.any())
        done = False
        if self.queued:
            if self.event is not None:
                self.event.synchronize()
            done = not bool(self.host[0])
        self.host.copy_(self.unfinished.any().view(1), non_blocking=self.event is not None)
        if self.event is not None:
            self.event.record()
        self.queued = True
        return done


# ----------------------------------------------------------------------------- decode attention

@functools.cache
def _compiled_flex():
    """torch.compile'd flex_attention, once per process (FlexAttention runs fast only compiled)."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_decode(valid):
    """`attend(q, kc, vc, scale)` for decode steps through FlexAttention: every query head against
    its KV head (`enable_gqa`), slots where `valid` (B, S) is false masked by a score_mod. On CUDA
    torch.compile turns it into FlexAttention's decoding kernel, which splits each row's cache
    across the GPU's SMs; elsewhere it runs eagerly (the reference math, for tests)."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    def valid_only(score, b, h, q_idx, kv_idx):
        return torch.where(valid[b, kv_idx], score, float("-inf"))

    run = _compiled_flex() if valid.is_cuda else flex_attention

    def attend(q, kc, vc, scale):
        if valid.is_cuda:
            return run(q, kc, vc, score_mod=valid_only, scale=scale, enable_gqa=True)
        import warnings

        with warnings.catch_warnings():  # "flex attention running in eager mode": intended off CUDA
            warnings.simplefilter("ignore")
            return run(q, kc, vc, score_mod=valid_only, scale=scale, enable_gqa=True)

    return attend


def _prefix_pre(layer, hidden, cos, sin):
    return attention_inputs(layer, hidden, cos, sin)


def _prefix_post(layer, hidden, o):
    return attention_output_and_mlp(layer, hidden, o)


# ----------------------------------------------------------------------------- batch layout


def mm_token_types(ids, config):
    """transformers 5's `mm_token_type_ids` for token ids (B, L): 1 at image tokens, 2 at video
    tokens, 0 elsewhere (what its processor returns; 4.57's returns none)."""
    import torch

    types = torch.zeros_like(ids)
    for value, token in ((1, getattr(config, "image_token_id", None)), (2, getattr(config, "video_token_id", None))):
        if token is not None:
            types[ids == token] = value
    return types


@dataclass
class Group:
    rows: list[int]  # batch rows that share this prefix
    prefix: list[int]  # token ids of the shared prefix (unpadded)
    types: list[int]  # mm_token_type_ids of the prefix
    videos: list[int]  # indices into the batch's video list (the first row's videos)


def plan_groups(ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]],
                row_videos: Sequence[Sequence[Any]], video_index: Sequence[Sequence[int]]) -> list[Group]:
    """Rows with the same videos (by identity key) share their longest common prefix — at most
    the shortest row minus one token, so every row keeps a suffix — when it holds every vision
    token; otherwise each row is its own group."""
    by_key: dict[tuple, list[int]] = {}
    order: list[tuple] = []
    for r, keys in enumerate(row_videos):
        key = ("videos", tuple(keys)) if keys else ("row", r)
        if key not in by_key:
            by_key[key] = []
            order.append(key)
        by_key[key].append(r)
    groups: list[Group] = []
    for key in order:
        rows = by_key[key]
        c = min(len(ids[r]) for r in rows) - 1
        first = ids[rows[0]]
        for r in rows[1:]:
            row = ids[r]
            j = 0
            while j < c and row[j] == first[j]:
                j += 1
            c = j
        last_vision = max((j for j, t in enumerate(types[rows[0]]) if t), default=-1)
        if last_vision < c and c > 0:
            groups.append(Group(rows, list(first[:c]), list(types[rows[0]][:c]), list(video_index[rows[0]])))
            continue
        for r in rows:  # the prefix would cut a video: no sharing
            c = len(ids[r]) - 1
            lv = max((j for j, t in enumerate(types[r]) if t), default=-1)
            if lv >= c or c < 1:
                raise NotSupported(f"row {r}: its last token is a vision token")
            groups.append(Group([r], list(ids[r][:c]), list(types[r][:c]), list(video_index[r])))
    return groups


# ----------------------------------------------------------------------------- the generator


def _same_prefill(plain, run_other) -> Optional[str]:
    """None when `run_other()` gives `plain`'s (hidden states, cache) bit for bit, else why not."""
    import torch

    try:
        hidden, cache = run_other()
    except Exception as exc:  # noqa: BLE001 — any failure keeps the plain call
        return f"{type(exc).__name__}: {exc}"
    if not torch.equal(hidden, plain[0]):
        return "hidden states differ from the plain call's"
    for a, b in zip(plain[1].layers, cache.layers):
        if not (torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)):
            return "cached keys/values differ from the plain call's"
    return None


class FastGenerator:
    """See the module docstring. One instance per engine; not thread-safe."""

    def __init__(self, model, *, pad_token_id: int, eos_token_ids: Sequence[int], prefill_batch: int = 8,
                 cuda_graphs: bool = True, compile: bool = False, decode_attention: str = "sdpa",
                 prefix: str = "transcribed"):
        if not supports(model):
            raise NotSupported(f"{type(model).__name__}: not a Qwen3-VL model")
        self.model = model
        # the layer halves of text_forward (suffixes, decode steps); compiled: one graph serves every
        # layer (parameters are graph inputs), fused norms/RoPE/SwiGLU inside the captured decode step
        self.pieces = self._plain_pieces = (attention_inputs, attention_output_and_mlp)
        if compile:
            import torch

            self.pieces = tuple(torch.compile(f) for f in self.pieces)
        self.pad = int(pad_token_id)
        self.eos = [int(e) for e in eos_token_ids]
        self.prefill_batch = max(1, int(prefill_batch))
        self.cuda_graphs = bool(cuda_graphs)
        if decode_attention not in DECODE_ATTENTION:
            raise ValueError(f"decode_attention = {decode_attention!r}: one of {', '.join(DECODE_ATTENTION)}")
        self.decode_attention = decode_attention
        if prefix not in PREFIX_LAYERS:
            raise ValueError(f"prefix = {prefix!r}: one of {', '.join(PREFIX_LAYERS)}")
        self.prefix = prefix
        # the prefix's decoder layers: their own compiled graph (another code object), so that the long
        # prompt blocks and the one-token decode steps keep separate specialisations
        self.prefix_pieces = self._plain_pieces
        if compile:
            import torch

            self.prefix_pieces = (torch.compile(_prefix_pre), torch.compile(_prefix_post))
        base_params = inspect.signature(model.model.forward).parameters
        self._cache_kw = "cache" if "cache" in base_params else "past_key_values"
        # transformers 5 numbers mRoPE positions by mm_token_type_ids; 4.57 finds the vision tokens itself
        rope_params = inspect.signature(model.model.get_rope_index).parameters
        self._types_kw = "mm_token_type_ids" in rope_params and "mm_token_type_ids" in base_params
        self._buffers: Optional[dict[str, Any]] = None  # kc, vc, valid for the current (B, S)
        self._steps: dict[tuple[int, int, int], dict[str, Any]] = {}  # decode steps by (B, S, kv_len)
        self._graph: Optional[dict[str, Any]] = None  # the step used last
        self.graph_error: Optional[str] = None
        self.decode_attention_error: Optional[str] = None  # why the chosen decode attention fell back to sdpa
        self.decode_attention_used: Optional[str] = None  # the kernel the decode steps run (after "auto" or a fallback)

        # the vision tower's grid-derived inputs from the host (avcap.models.qwen3_vl.host_vision): None until
        # the first prefill with videos has compared them with the plain call, then True or False
        self.host_vision_error: Optional[str] = host_vision.unsupported_reason(model)
        self.host_vision: Optional[bool] = None if self.host_vision_error is None else False
        self.host_vision_check: Optional[str] = None  # "ran" or "remembered" (a pass kept from an earlier process)
        # cumulative seconds per phase (the device is synchronised at phase ends): what limits a run
        self.timings: dict[str, float] = {"prefix_s": 0.0, "suffix_s": 0.0, "decode_s": 0.0, "decode_steps": 0,
                                          "rows": 0, "prefixes": 0, "step_builds": 0, "step_build_s": 0.0,
                                          "layer_check_s": 0.0}
        # the transcribed decoder layer against transformers' own, checked on the first call
        self.layer_error: Optional[str] = None
        self.layer_check: Optional[str] = None  # "ran" or "remembered" (a pass kept from an earlier process)
        self._layer_checked = False

    def _check_layer(self, device) -> None:
        """The transcribed layer against transformers' (`check_layer_against_library`), once per
        engine; a pass for the same code, versions, configuration, dtype and GPU is remembered
        across processes (avcap.core.verdicts) and not run again. `layer_check` says which: "ran"
        or "remembered"."""
        t = time.perf_counter()
        key = layer_check_key(self.model, self._plain_pieces, device=device)
        if key is not None and passed_before(LAYER_CHECK, key):
            self.layer_error, how = None, "remembered"
        else:
            self.layer_error, how = check_layer_against_library(self.model, self._plain_pieces, device=device), "ran"
            if self.layer_error is None and key is not None:
                remember_pass(LAYER_CHECK, key)
        self._layer_checked = True
        self.layer_check = how
        self.timings["layer_check_s"] += time.perf_counter() - t

    # ---------------------------------------------------------------- public

    def generate(self, inputs, row_videos: Sequence[Sequence[Any]], spec: SamplingSpec, *, max_new_tokens: int,
                 video_pixels: Optional[Sequence[Any]] = None, device=None):
        """New token ids (B, T) on the CPU, T <= max_new_tokens, pad after a row's EOS.

        `inputs`: the processor's batch (input_ids, attention_mask, mm_token_type_ids,
        video_grid_thw, pixel_values_videos), left-padded; `row_videos`: per row, an identity key
        per video (rows with equal keys share a prefix); `video_pixels`: per request video, its
        pixel patches (default: `pixel_values_videos` split by the grid)."""
        import torch

        if not self._layer_checked:
            self._check_layer(device)
        if self.layer_error is not None:
            raise NotSupported(self.layer_error)
        logits, st = self.prefill(inputs, row_videos, max_new_tokens=max_new_tokens, video_pixels=video_pixels,
                                  device=device)
        b, s_len, p, device = st["batch"], st["slots"], st["prompt_slots"], st["device"]
        t_dec = time.perf_counter()
        chooser = Chooser(spec, b, logits.shape[-1], self.eos, self.pad, device)
        out = torch.full((b, max_new_tokens), self.pad, dtype=torch.long, device=device)
        tok = chooser(logits, 0)
        out[:, 0] = tok
        steps = 1
        if max_new_tokens == 1:
            out = out[:, :1].cpu()
            self.timings["decode_s"] += time.perf_counter() - t_dec
            return out
        step = self._step_fn(b, s_len, device, self._kv_len(p, s_len))
        st_tok, st_pos, st_slot = step["tok"], step["pos"], step["slot"]
        st_tok.copy_(tok)
        st_pos.copy_(st["last_pos"] + 1)
        st_slot.fill_(p)
        # lagged checks every 4 steps stop at most 7 steps after the last row finished, as often as
        # unlagged checks every 8 did, without draining the GPU's queue at each check
        check_every = 1 if max_new_tokens <= 16 else 4
        stop = StopCheck(chooser.unfinished, lag=check_every > 1)
        for t in range(1, max_new_tokens):
            if t % check_every == 0 and stop.all_finished():
                break
            kv_len = self._kv_len(p + t - 1, s_len)  # step t writes slot p + t - 1 and attends up to it
            if kv_len != step["kv_len"]:
                step = self._step_fn(b, s_len, device, kv_len)
            logits = step["run"]()
            tok = chooser(logits, t)
            out[:, t] = tok
            st_tok.copy_(tok)
            st_pos.add_(1)
            st_slot.add_(1)
            steps = t + 1
        out = out[:, :steps].cpu()
        self.timings["decode_s"] += time.perf_counter() - t_dec
        self.timings["decode_steps"] += steps - 1
        return out

    def prefill(self, inputs, row_videos: Sequence[Sequence[Any]], *, max_new_tokens: int,
                video_pixels: Optional[Sequence[Any]] = None, device=None):
        """Fill the cache with every row's prompt; returns the float32 logits (B, V) of each row's
        next token and the layout (batch, slots, prompt_slots, last_pos, device)."""
        import torch

        if inputs.get("pixel_values") is not None:
            raise NotSupported("images")
        model = self.model
        device = torch.device(device) if device is not None else model.lm_head.weight.device
        ids_t = inputs["input_ids"]
        mask_t = inputs["attention_mask"].bool()
        types_t = inputs.get("mm_token_type_ids")
        b = ids_t.shape[0]
        if types_t is None:  # transformers 4.57's processor has none: the same types from the token ids
            types_t = mm_token_types(ids_t, model.config)
        ids_cpu, mask_cpu, types_cpu = ids_t.cpu(), mask_t.cpu(), types_t.cpu()
        ids = [ids_cpu[r][mask_cpu[r]].tolist() for r in range(b)]
        types = [types_cpu[r][mask_cpu[r]].tolist() for r in range(b)]
        grid = inputs.get("video_grid_thw")
        if grid is not None:
            grid = grid.cpu()  # host-side planning (positions, splits) without waiting for the device
        n_videos = [len(v) for v in row_videos]
        if len(n_videos) != b or sum(n_videos) != (0 if grid is None else grid.shape[0]):
            raise NotSupported("videos per row do not match video_grid_thw")
        starts = [sum(n_videos[:r]) for r in range(b)]
        video_index = [list(range(starts[r], starts[r] + n_videos[r])) for r in range(b)]
        groups = plan_groups(ids, types, row_videos, video_index)
        pixels = video_pixels
        if pixels is None and grid is not None:
            pixels = torch.split(inputs["pixel_values_videos"], grid.prod(-1).tolist())

        suffix: list[list[int]] = [[] for _ in range(b)]
        row_group = [0] * b
        for gi, g in enumerate(groups):
            for r in g.rows:
                suffix[r] = ids[r][len(g.prefix):]
                row_group[r] = gi
        pp = max(len(g.prefix) for g in groups)
        ls = max(len(x) for x in suffix)
        p = pp + ls
        s_len = _round_up(p + max_new_tokens, SLOT_ALIGN)
        kc, vc, valid = self._cache(b, s_len, device)
        valid.zero_()

        # 1. prefixes through transformers' forward, copied into their rows
        t0 = time.perf_counter()
        prefix_max = [0] * len(groups)
        for lo in range(0, len(groups), self.prefill_batch):
            chunk = list(range(lo, min(lo + self.prefill_batch, len(groups))))
            self._prefill_prefixes([groups[i] for i in chunk], chunk, pixels, grid, pp, kc, vc, valid, prefix_max)

        _sync(device)
        t1 = time.perf_counter()
        self.timings["prefix_s"] += t1 - t0
        self.timings["prefixes"] += len(groups)
        self.timings["rows"] += b

        # 2. suffixes through text_forward
        sfx = torch.full((b, ls), self.pad, dtype=torch.long)
        pos = torch.zeros((b, ls), dtype=torch.long)
        for r in range(b):
            n = len(suffix[r])
            sfx[r, ls - n:] = torch.tensor(suffix[r], dtype=torch.long)
            pos[r, ls - n:] = torch.arange(n) + prefix_max[row_group[r]] + 1
            valid[r, p - n:p] = True
        last_pos = pos[:, -1].to(device)
        sfx, pos = sfx.to(device), pos.to(device)
        slots = torch.arange(pp, p, device=device)
        kslot = torch.arange(s_len, device=device)
        m = valid[:, None, None, :] & (kslot[None, None, None, :] <= slots[None, None, :, None])
        h = model.model.language_model.embed_tokens(sfx)
        cos, sin = rotary(model, h, pos[None].expand(3, b, ls))
        h = text_forward(model, h, cos, sin, kc, vc, slots, m, self.pieces)
        logits = model.lm_head(h[:, -1]).float()
        _sync(device)
        self.timings["suffix_s"] += time.perf_counter() - t1
        return logits, {"batch": b, "slots": s_len, "prompt_slots": p, "last_pos": last_pos, "device": device,
                        "groups": len(groups)}

    # ---------------------------------------------------------------- pieces

    @property
    def holds_cache(self) -> bool:
        """Whether a KV cache (and decode steps captured over it) is kept for the next batch."""
        return self._buffers is not None

    def release(self, unless_rows: Optional[int] = None) -> bool:
        """Drop the KV cache and the decode steps captured over it (their memory goes back to the
        allocator), unless it holds `unless_rows` rows, so the next batch can reuse it. At 8B a
        96-row cache is ~44 GB: a batch of another size built its inputs (float32 pixels then, ~63 MB
        per video, three times over in the processor) beside it otherwise, which ran an H100 out of
        memory (gpu_run65 call 9). Returns whether anything was dropped."""
        buf = self._buffers
        if buf is None or (unless_rows is not None and buf["shape"][0] == unless_rows):
            return False
        self._buffers = self._graph = None
        self._steps = {}
        if buf["device"].type == "cuda":
            import torch

            del buf
            torch.cuda.empty_cache()
        return True

    def _cache(self, b: int, s_len: int, device):
        """kc, vc (layers, B, kv_heads, S, D) and valid (B, S), reused while (B, S) repeats.
        Zero-initialised: masked slots must hold finite numbers (0 x NaN is NaN)."""
        import torch

        buf = self._buffers
        if buf is not None and buf["shape"] == (b, s_len) and buf["device"] == device:
            return buf["kc"], buf["vc"], buf["valid"]
        # the old cache (and the graphs that read it) go before the new one is allocated: at 8B a
        # caption batch's cache is ~29 GiB, two at once do not fit beside the weights
        buf = self._buffers = self._graph = None
        self._steps = {}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        tc = self.model.config.text_config
        layers, kv, d = tc.num_hidden_layers, tc.num_key_value_heads, tc.head_dim
        dtype = self.model.lm_head.weight.dtype
        kc = torch.zeros((layers, b, kv, s_len, d), dtype=dtype, device=device)
        vc = torch.zeros_like(kc)
        valid = torch.zeros((b, s_len), dtype=torch.bool, device=device)
        self._buffers = {"shape": (b, s_len), "device": device, "kc": kc, "vc": vc, "valid": valid}
        return kc, vc, valid

    def _prefill_prefixes(self, groups: list[Group], gidx: list[int], pixels, grid, pp: int, kc, vc, valid,
                          prefix_max: list[int]) -> None:
        import torch
        from transformers import DynamicCache

        model = self.model
        device = kc.device
        n = max(len(g.prefix) for g in groups)
        nb = len(groups)
        ids = torch.full((nb, n), self.pad, dtype=torch.long)
        types = torch.zeros((nb, n), dtype=torch.long)
        att = torch.zeros((nb, n), dtype=torch.long)
        vids: list[int] = []
        for j, g in enumerate(groups):
            c = len(g.prefix)
            ids[j, n - c:] = torch.tensor(g.prefix, dtype=torch.long)
            types[j, n - c:] = torch.tensor(g.types, dtype=torch.long)
            att[j, n - c:] = 1
            vids += g.videos
        sub_grid = grid[vids].cpu() if vids else None
        # mRoPE positions on the host: get_rope_index walks every row and video with many tiny
        # ops; on the GPU each waits for the queue (the previous prefill call) and leaves it idle
        types_kw = {"mm_token_type_ids": types} if self._types_kw else {}  # transformers 5 (4.57: none)
        with host_vision.one_cpu_thread():
            positions, _ = model.model.get_rope_index(ids, attention_mask=att, video_grid_thw=sub_grid, **types_kw)
            for j in range(nb):
                prefix_max[gidx[j]] = int(positions[:, j][:, att[j].bool()].max())
            host = self._host_vision(ids, sub_grid, device) if vids else None
        types_kw = {k: to_device(t, device) for k, t in types_kw.items()}
        pix: dict[str, Any] = {}
        if vids:
            pix["pixel_values_videos"] = torch.cat([pixels[v] for v in vids]).to(device)

        padded = not bool(att.all())
        ids, att, positions = (to_device(t, device) for t in (ids, att, positions))

        def forward(hv):
            cache = DynamicCache(config=model.config)
            grid = {} if not vids else {"video_grid_thw": hv.grid if hv else to_device(sub_grid, device)}
            transcribed = self._transcribed(padded) if self.prefix == "transcribed" else contextlib.nullcontext()
            with hv.applied(model) if hv else contextlib.nullcontext(), transcribed:
                out = model.model(input_ids=ids, attention_mask=att, position_ids=positions, use_cache=True,
                                  **{self._cache_kw: cache}, **types_kw, **pix, **grid)
            return out.last_hidden_state, cache

        compared = False
        if host is not None and self.host_vision is None:  # first time: a pass remembered, or compare now
            key = host_vision.check_key(model, device)
            if key is not None:  # and this module's prefill, which both sides of the comparison run
                key["prefill"] = source_digest(_same_prefill) + source_digest(FastGenerator._prefill_prefixes)
            if key is not None and passed_before(HOST_VISION_CHECK, key):
                self.host_vision, self.host_vision_check = True, "remembered"
            else:  # the same numbers as the plain call?
                hidden, cache = forward(None)
                self.host_vision_error = _same_prefill((hidden, cache), lambda: forward(host))
                self.host_vision, self.host_vision_check, compared = self.host_vision_error is None, "ran", True
                if self.host_vision and key is not None:
                    remember_pass(HOST_VISION_CHECK, key)
                if not self.host_vision:
                    import warnings

                    warnings.warn(f"avcap fast generate: vision inputs from the host kept off ({self.host_vision_error})")
        if not compared:
            hidden, cache = forward(host if self.host_vision else None)
        del hidden
        row_list = [r for g in groups for r in g.rows]
        src_list = [j for j, g in enumerate(groups) for _ in g.rows]
        one_each = src_list == list(range(nb)) and row_list == list(range(row_list[0], row_list[0] + nb))
        rows = to_device(torch.tensor(row_list, dtype=torch.long), device)
        src = to_device(torch.tensor(src_list, dtype=torch.long), device)
        for li, layer in enumerate(cache.layers):
            for dst, new in ((kc[li, :, :, pp - n:pp], layer.keys), (vc[li, :, :, pp - n:pp], layer.values)):
                if one_each:  # consecutive rows, one per prefix (captions): a plain strided copy
                    dst[row_list[0]: row_list[0] + nb].copy_(new)
                else:
                    dst.index_copy_(0, rows, new.index_select(0, src).to(dst.dtype))
        valid[rows, pp - n:pp] = att.bool().index_select(0, src)
        del cache

    @contextlib.contextmanager
    def _transcribed(self, padded: bool):
        """The language model's forward, for the calls made inside, runs `prefix_layers` (the
        transcribed layer, one compiled graph for all layers) instead of the library's layers;
        embeddings, vision tower, placeholder scatter and mRoPE stay the library's."""
        from transformers.modeling_outputs import BaseModelOutputWithPast

        model = self.model
        lm = model.model.language_model
        cache_field = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

        def forward(input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                    visual_pos_masks=None, deepstack_visual_embeds=None, **kw):
            cache = kw.get("cache", kw.get("past_key_values"))
            if inputs_embeds is None:
                inputs_embeds = lm.embed_tokens(input_ids)
            hidden = prefix_layers(model, inputs_embeds, position_ids, attention_mask, cache, visual_pos_masks,
                                   deepstack_visual_embeds, self.prefix_pieces, padded=padded)
            return BaseModelOutputWithPast(last_hidden_state=hidden, **{cache_field: cache})

        with replaced((lm, "forward", forward)):
            yield

    def _host_vision(self, ids, grid, device):
        """This call's vision inputs from the host (None when they are off or do not apply)."""
        if self.host_vision is False:
            return None

        try:
            return HostVision(self.model, ids, grid, device)
        except NotSupported as exc:
            self.host_vision_error = str(exc)
            return None

    @staticmethod
    def _kv_len(slot: int, s_len: int) -> int:
        """Cache slots a decode step writing `slot` attends over: whole KV_BLOCKs up to the slot."""
        return min(s_len, _round_up(slot + 1, KV_BLOCK))

    def _step_fn(self, b: int, s_len: int, device, kv_len: int) -> dict[str, Any]:
        """The one-token decode step over the first `kv_len` cache slots: eager, or a CUDA graph
        replay (one graph per kv_len; all share the step's inputs tok, pos, slot)."""
        import torch

        key = (b, s_len, kv_len)
        if key in self._steps:
            self._graph = self._steps[key]
            return self._graph
        t_build = time.perf_counter()  # a new decode step: traced, compiled or loaded, and captured (part of decode_s)
        model = self.model
        kc, vc, valid = self._buffers["kc"], self._buffers["vc"], self._buffers["valid"]
        shared = next(iter(self._steps.values()), None)
        if shared is not None:
            tok, pos, slot = shared["tok"], shared["pos"], shared["slot"]
        else:
            tok = torch.zeros(b, dtype=torch.long, device=device)
            pos = torch.zeros(b, dtype=torch.long, device=device)
            slot = torch.zeros(1, dtype=torch.long, device=device)
        kv, vv, mask = kc[..., :kv_len, :], vc[..., :kv_len, :], valid[:, None, None, :kv_len]
        attend = self._decode_attend(valid, device)

        def eager():
            valid.index_fill_(1, slot, True)
            h = model.model.language_model.embed_tokens(tok)[:, None, :]
            cos, sin = rotary(model, h, pos.view(1, b, 1).expand(3, b, 1))
            h = text_forward(model, h, cos, sin, kv, vv, slot, mask, self.pieces, attend)
            return model.lm_head(h[:, -1]).float()

        entry: dict[str, Any] = {"shape": (b, s_len), "kv_len": kv_len, "tok": tok, "pos": pos, "slot": slot,
                                 "run": eager}
        if device.type == "cuda" and self.cuda_graphs:
            saved = valid.clone()
            try:
                entry["run"] = self._capture(eager, kc, vc, valid, slot, kv_len)
            except Exception as exc:  # keep going eagerly (same results, slower); say why once
                import warnings

                valid.copy_(saved)
                self.cuda_graphs = False
                self.graph_error = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"avcap fast generate: CUDA graph capture failed, decoding eagerly ({self.graph_error})")
        self._steps[key] = self._graph = entry
        self.timings["step_builds"] += 1
        self.timings["step_build_s"] += time.perf_counter() - t_build
        return entry

    def _decode_attend(self, valid, device):
        """The decode step's `attend` for `decode_attention` (None: text_forward's masked sdpa).
        Triton's kernel needs a GPU (or Triton's interpreter, TRITON_INTERPRET=1); without one the
        step uses sdpa, says so once and keeps why in `decode_attention_error` (the run's record).
        "auto" is Triton's kernel on a CUDA device and sdpa elsewhere, without a word."""
        want = self.decode_attention
        if want == "auto":
            want = "triton" if device.type == "cuda" else "sdpa"
        self.decode_attention_used = want
        if want == "flex":
            return flex_decode(valid)
        if want != "triton":
            return None
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            reason = f"the Triton kernel needs a CUDA device, not {device.type}"
        else:
            try:
                from avcap.engines.hf.triton_decode import triton_decode
            except ImportError as exc:
                reason = f"Triton is not importable ({exc})"
            else:
                return triton_decode(valid)
        self.decode_attention_used = "sdpa"
        if self.decode_attention_error is None:
            import warnings

            self.decode_attention_error = reason
            warnings.warn(f"avcap fast generate: decode_attention = \"{self.decode_attention}\": Triton's kernel "
                          f"unavailable, decoding with sdpa ({reason})")
        return None

    def _capture(self, eager, kc, vc, valid, slot, s_len: int):
        """Capture `eager` as a CUDA graph after two eager runs; the warm-up writes land in slot
        `s_len - 1` (the last one `eager` attends over: not yet written by the decode) and are undone."""
        import torch

        saved_valid, saved_slot = valid.clone(), slot.clone()  # a capture may come mid-decode
        slot.fill_(s_len - 1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                eager()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads of this process (the processor ahead, NVDEC decoders) keep
        # working on their own streams during the capture; "global" would make their allocations
        # and default-stream work invalidate it
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = eager()
        valid.copy_(saved_valid)
        slot.copy_(saved_slot)
        kc[:, :, :, s_len - 1].zero_()
        vc[:, :, :, s_len - 1].zero_()

        def run():
            graph.replay()
            return out

        return run
