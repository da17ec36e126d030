"""coco-caption BLEU-4, in pure Python, plus sacrebleu's corpus BLEU as a cross-check.

The headline number is what captioning papers report: coco-caption's `Bleu(4)` (pycocoevalcap
`bleu/bleu.py` + `bleu/bleu_scorer.py`) on captions preprocessed by coco-caption's `PTBTokenizer`:

- tokenization: Stanford PTBTokenizer 3.4.1 `-preserveLines -lowerCase`, then the tokens in
  coco-caption's PUNCTUATIONS list dropped (`avcap.eval.metrics.ptb_tokenizer`, a pure-Python re-creation
  checked token for token against the jar);
- corpus-level statistics: clipped n-gram matches and hypothesis n-gram counts summed over all
  captions, effective reference length = the reference length closest to each hypothesis' length
  (ties: the shorter), summed;
- BLEU-n = (prod_{k<=n} (matches_k + 1e-15) / (guesses_k + 1e-9)) ** (1/n), times the brevity penalty
  exp(1 - 1/ratio) when ratio = (testlen + 1e-15) / (reflen + 1e-9) < 1 — BleuScorer's exact constants
  and operation order, so the floats are bit-identical to pycocoevalcap on the same tokens;
- per-caption ("sentence") BLEU-4 is BleuScorer's per-image score from the same pass.

Range 0-1. sacrebleu (0-100, its default 13a tokenizer, case-sensitive, exp smoothing) is reported
beside it as a cross-check only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional, Sequence

from avcap.eval.metrics.ptb_tokenizer import coco_tokenize_corpus

# Heavy libraries (sacrebleu) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

IMPLEMENTATION = (
    "avcap.eval.metrics.bleu: pure-Python re-implementation of pycocoevalcap BleuScorer "
    "(Bleu(4), option='closest', tiny=1e-15, small=1e-9), corpus level"
)
TOKENIZATION = (
    "coco-caption PTBTokenizer (Stanford PTBTokenizer 3.4.1 -preserveLines -lowerCase, then "
    "coco-caption's PUNCTUATIONS removed), re-implemented in pure Python by avcap.eval.metrics.ptb_tokenizer"
)

_TINY = 1e-15
_SMALL = 1e-9


def _precook(s: str, n: int = 4) -> tuple[int, dict[tuple[str, ...], int]]:
    words = s.split()
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return len(words), counts


def _cook_refs(refs: Sequence[str], n: int = 4) -> tuple[list[int], dict[tuple[str, ...], int]]:
    reflens: list[int] = []
    maxcounts: dict[tuple[str, ...], int] = {}
    for ref in refs:
        rl, counts = _precook(ref, n)
        reflens.append(rl)
        for ngram, count in counts.items():
            maxcounts[ngram] = max(maxcounts.get(ngram, 0), count)
    return reflens, maxcounts


def _cook_test(test: str, cooked_refs: tuple[list[int], dict], n: int = 4) -> dict:
    reflens, refmaxcounts = cooked_refs
    testlen, counts = _precook(test, n)
    correct = [0] * n
    for ngram, count in counts.items():
        correct[len(ngram) - 1] += min(refmaxcounts.get(ngram, 0), count)
    return {
        "reflen": min((abs(rl - testlen), rl) for rl in reflens)[1],  # option="closest"
        "testlen": testlen,
        "guess": [max(0, testlen - k + 1) for k in range(1, n + 1)],
        "correct": correct,
    }


@dataclass
class BleuResult:
    bleu: list[float]  # BLEU-1..BLEU-n, corpus level (bleu[-1] is the headline BLEU-4)
    per_sentence: list[list[float]]  # per_sentence[k][i]: BLEU-(k+1) of caption i
    testlen: int
    reflen: int
    tokenized_hypotheses: list[str] = field(default_factory=list)
    tokenized_references: list[list[str]] = field(default_factory=list)

    @property
    def bleu4(self) -> float:
        return self.bleu[-1]

    @property
    def ratio(self) -> float:
        return (self.testlen + _TINY) / (self.reflen + _SMALL)


def bleu_from_tokens(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> BleuResult:
    """BleuScorer(n).compute_score(option='closest') on already tokenized, space-joined captions."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) < 1:
            raise ValueError(f"references[{i}] must be a non-empty list of strings")
    bleu_list: list[list[float]] = [[] for _ in range(n)]
    total_testlen = 0
    total_reflen = 0
    guess_tot = [0] * n
    correct_tot = [0] * n
    for hyp, refs in zip(hypotheses, references):
        comps = _cook_test(hyp, _cook_refs(refs, n), n)
        testlen, reflen = comps["testlen"], comps["reflen"]
        total_testlen += testlen
        total_reflen += reflen
        for k in range(n):
            guess_tot[k] += comps["guess"][k]
            correct_tot[k] += comps["correct"][k]
        bleu = 1.0
        for k in range(n):
            bleu *= (float(comps["correct"][k]) + _TINY) / (float(comps["guess"][k]) + _SMALL)
            bleu_list[k].append(bleu ** (1.0 / (k + 1)))
        ratio = (testlen + _TINY) / (reflen + _SMALL)
        if ratio < 1:
            for k in range(n):
                bleu_list[k][-1] *= math.exp(1 - 1 / ratio)
    bleus: list[float] = []
    bleu = 1.0
    for k in range(n):
        bleu *= float(correct_tot[k] + _TINY) / (guess_tot[k] + _SMALL)
        bleus.append(bleu ** (1.0 / (k + 1)))
    ratio = (total_testlen + _TINY) / (total_reflen + _SMALL)
    if ratio < 1:
        for k in range(n):
            bleus[k] *= math.exp(1 - 1 / ratio)
    return BleuResult(bleus, bleu_list, total_testlen, total_reflen, list(hypotheses), [list(r) for r in references])


def tokenize_for_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    """coco-caption preprocessing: the hypotheses as one batch and all references as another (as
    coco-caption tokenizes `res` and `gts` in two calls), one caption per line."""
    hyp_tok = coco_tokenize_corpus([h if isinstance(h, str) else "" for h in hypotheses])
    flat = [r for refs in references for r in refs]
    flat_tok = coco_tokenize_corpus(flat)
    ref_tok: list[list[str]] = []
    i = 0
    for refs in references:
        ref_tok.append(flat_tok[i : i + len(refs)])
        i += len(refs)
    return hyp_tok, ref_tok


def bleu_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> BleuResult:
    """Tokenize like coco-caption, then score like BleuScorer; raw caption text in."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    hyp_tok, ref_tok = tokenize_for_bleu(hypotheses, references)
    return bleu_from_tokens(hyp_tok, ref_tok, n)


def corpus_bleu(hypotheses: list[str], references: list[list[str]]) -> float:
    """coco-caption corpus BLEU-4 in [0, 1]: `references[i]` are the reference captions of
    `hypotheses[i]` (one or more)."""
    return bleu_scores(hypotheses, references).bleu4


def sentence_bleu(hypothesis: str, references: list[str]) -> float:
    """BLEU-4 of one caption on its own (BleuScorer's per-image score of a one-caption corpus)."""
    return bleu_scores([hypothesis], [references]).per_sentence[3][0]


def sacrebleu_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """sacrebleu's corpus BLEU (0-100, default 13a tokenizer, mixed case, exp smoothing)."""
    from sacrebleu.metrics import BLEU

    max_refs = max((len(r) for r in references), default=1)
    streams: list[list[Optional[str]]] = [
        [refs[j] if j < len(refs) else None for refs in references] for j in range(max_refs)
    ]
    metric = BLEU()
    score = metric.corpus_score([h if isinstance(h, str) else "" for h in hypotheses], streams)
    return {"score": float(score.score), "signature": str(metric.get_signature())}


def bleu_report(ids: Sequence[str], hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """The `bleu` block of metrics.json (docs/formats.md)."""
    res = bleu_scores(hypotheses, references)
    out = {
        "value": res.bleu4,
        "implementation": IMPLEMENTATION,
        "tokenization": TOKENIZATION,
        "n": len(hypotheses),
        "bleu_1_to_4": res.bleu,
        "brevity_ratio": res.ratio,
        "hypothesis_tokens": res.testlen,
        "reference_tokens": res.reflen,
        "per_video": {str(i): s for i, s in zip(ids, res.per_sentence[3])},
    }
    if hypotheses:
        out["sacrebleu"] = sacrebleu_corpus(hypotheses, references)
    return out
