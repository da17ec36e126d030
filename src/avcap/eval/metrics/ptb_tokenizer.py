"""Pure-Python PTB-style tokenizer that mimics coco-caption's tokenization step.

coco-caption (pycocoevalcap `tokenizer/ptbtokenizer.py`) runs Stanford CoreNLP 3.4.1's
`edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase` over the captions (newlines in
a caption replaced by spaces), splits each output line on single spaces and drops every token in
`PUNCTUATIONS`. `coco_tokenize` reproduces that without Java.

How: a longest-match scanner over the line, the way a JFlex lexer works — at each position every
rule is tried, the longest match wins (trailing context counts towards the length but is not
consumed), ties go to the rule listed first. The rules below are written from the observed
behaviour of the 3.4.1 jar on driving-scene English and checked token for token against it
(tests/test_bleu.py runs the jar when Java and pycocoevalcap's jar are installed).

Checked against the jar (tests/test_bleu.py, when Java is installed): identical tokens on all
2,064 lines of LingoQA's questions, reference answers and example predictions, on the recipe text,
and on thousands of randomly assembled caption-like lines (words, numbers, units, abbreviations,
contractions, quotes, brackets, dashes, JSON fragments, accented letters).

Known differences that remain (none changes a token of ordinary caption text):
- line separators other than "\n" inside a caption (\r, U+2028, U+0085, ...) are treated as
  spaces; in coco-caption the jar ends a line there and every later caption shifts onto the wrong
  image (a coco-caption bug we do not reproduce);
- Unicode coverage: letters/digits are Unicode's L*/Nd classes (the jar: Java's BMP-only JFlex
  classes); characters outside the Basic Multilingual Plane (emoji) are dropped as the jar drops
  them; a few rare symbol blocks may be kept here and dropped there or vice versa;
- lower-casing is Python's `str.lower` (Java's `toLowerCase` differs for a handful of non-English
  letters, e.g. Turkish dotted I);
- pathological run-togethers seen only in fuzzing: a URL glued to a preceding word or number
  ("2ndwww.x.com"), and a second US phone number right after a first one on the same line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import regex  # a hard dependency of transformers; POSIX (leftmost-longest) matching like JFlex

# coco-caption's list, verbatim. Note that the jar lower-cases "-LRB-" to "-lrb-" before this
# filter runs, so bracket tokens are *not* removed by coco-caption; we keep that behaviour.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# ----------------------------------------------------------------------------- character classes

L = r"[\p{L}\u0300-\u036F]"  # a letter (JFlex [:letter:] plus combining accents)
D = r"\p{Nd}"  # a digit
AN = r"[\p{L}\p{Nd}]"  # letter or digit
APOS = r"(?:['\u0092\u2019]|&apos;)"
APOSX = r"(?:['\u0092\u2019\u0091\u2018\u201B]|&apos;)"  # apostrophe-like, inside words
SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
HYPHEN = r"[-_\u058A\u2010\u2011]"

REDAUX = APOS + r"(?:[msdMSD]|(?i:re|ve|ll))"
SREDAUX = r"[nN]" + APOSX + r"[tT]"
WORD = rf"(?:{L}|\u00AD)(?:{L}|{D}|\u00AD)*(?:[.!?]{L}(?:{L}|{D})*)*"
SWORD = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
NUM = rf"(?:{D}+(?:[.:,\u00AD\u066B\u066C]{D}+)*|{D}*(?:[.:,\u00AD\u066B\u066C]{D}+)+)"
NUMBER = rf"[-+]?{NUM}"
ACRO = r"(?:[A-Za-z](?:\.[A-Za-z])*|(?i:canada|sino|korean|eu|japan|non)-(?i:u\.s)|(?i:u\.s\.-(?:u\.k|u\.s\.s\.r)))"
ACRO2 = r"(?:[A-Za-z](?:\.[A-Za-z])+|(?i:canada|sino|korean|eu|japan|non)-(?i:u\.s)|(?i:u\.s\.-(?:u\.k|u\.s\.s\.r)))"

ABMONTH = r"jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
ABDAYS = r"mon|tue|tues|wed|thu|thurs|fri"
ABSTATE_CI = r"ala|ariz|az|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev|okla|penn|tenn|va|vt|wisc?|wyo"
ABSTATE_CS = r"A(?i:rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass)|M(?i:iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash)"
ABCOMP = r"inc|cos?|corp|pp?t[ye]s?|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys"
ABNUM = r"tel|est|ext|sq"
ABPTIT = r"jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq"
# abbreviations usually followed by a lower-case word; before an upper-case one they also end a sentence
ABBREV1 = rf"(?:(?i:{ABMONTH}|{ABDAYS}|{ABSTATE_CI}|{ABCOMP}|{ABNUM}|{ABPTIT}|etc|al|seq|bldg)|{ABSTATE_CS})\."
ABTITLE = (
    r"(?i:mr|mrs|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|capt|ste?"
    r"|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst|assoc|ens|insp|mlle|mme|msgr|sfc)"
    r"|M(?i:iss)"
)
ABCOMP2 = r"(?i:invt|elec|natl|m[ft]g|dept)"
# abbreviations usually followed by an upper-case word (never sentence-final)
ABBREV4 = rf"(?:[A-Za-z]|{ABTITLE}|(?i:vs|alex|wm|jos|cie|a\.k\.a|cf|treas|ph)|{ACRO}|{ABCOMP2})"
# abbreviations only before a number ("No. 5", "fig. 3")
ABBREV3 = r"(?i:ca|figs?|prop|nos?|art|pp|op)\."
# an acronym followed by one of these words ends a sentence ("U.S. The ...")
STARTERS = (
    r"(?:A(?i:bout)|A(?i:ccording)|A(?i:dditionally)|A(?i:fter)|A(?i:n)|A|A(?i:s)|A(?i:t)|B(?i:ut)"
    r"|E(?i:arlier)|H(?i:e)|H(?i:er)|H(?i:ere)|H(?i:owever)|I(?i:f)|I(?i:n)|I(?i:t)|L(?i:ast)|M(?i:any)"
    r"|M(?i:ore)|M(?i:r)\.|M(?i:s)\.|N(?i:ow)|O(?i:nce)|O(?i:ne)|O(?i:ther)|O(?i:ur)|S(?i:he)|S(?i:ince)"
    r"|S(?i:o)|S(?i:ome)|S(?i:uch)|T(?i:hat)|T(?i:he)|T(?i:hen)|T(?i:here)|T(?i:hese)|T(?i:hey)|T(?i:his)"
    r"|W(?i:e)|W(?i:hen)|W(?i:hile)|W(?i:hat)|Y(?i:et)|Y(?i:ou))"
)
SGML = r"</?[A-Za-z!][^>\n]*>"
SPACENL = r"[ \t\u00A0\u2000-\u200A\u3000\n]"
SENTEND = rf"(?:{SPACENL}(?:{SPACENL}|[A-Z]|{SGML}))"
INSENTP = r"[,;:]"
HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{ACRO2}\.))+"
THING = rf"(?:[dDoOlL]{APOSX}{AN})?{AN}+(?:{HYPHEN}(?:[dDoOlL]{APOSX}{AN})?{AN}+)*"
THINGA = r"[A-Z]+(?:(?:[+&]|&(?i:amp);)[A-Z]+)+"
THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
APOWORD = (
    rf"{APOS}[nN]{APOS}?|[lLdDjJ]{APOS}|(?i:dunkin|somethin|ol){APOS}|{APOS}(?i:em)"
    rf"|[A-HJ-XZn]{APOSX}{L}{{2}}{L}*|{APOS}[2-9]0[sS]|{APOS}(?i:till?)"
    rf"|{L}+[aeiouyAEIOUY]{APOSX}[aeiouA-Z]{L}*|{APOS}(?i:cause)"
    r"|(?i:cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)"
)
FULLURL = r"(?i:https?)://[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]"
LIKELYURL = (
    r"(?:(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})"
    r"|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){}\x2c-\x5f$]+\.)+(?i:com|net|org|edu)))"
    r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"
)
EMAIL = r"<?[a-zA-Z0-9][^ \t\n\f\r\"<>|(){}\u00A0]*@(?:[^ \t\n\f\r\"<>|().\u00A0]+\.)*[^ \t\n\f\r\"<>|(){}.\u00A0]+"
SMILEY = r"[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]]"
PHONE = r"(?:\([0-9]{3}\)[ \u00A0]?|[0-9]{3}[- \u00A0.])[0-9]{3}[- \u00A0.][0-9]{4}"
FRAC = rf"(?:{D}{{1,4}}[- \u00A0])?{D}{{1,4}}(?:\\?/|\u2044){D}{{1,4}}"
DBLQUOT = r"(?:\"|&(?i:quot);)"
QUOTES = (
    APOS + r"|''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}"
)
MISC = (
    "[\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4"
    "\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D\u07F6-\u07F8\u0964\u0965\u0E4F"
    "\u2020-\u2023\u2032-\u2038\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u22FF"
    "\u2300-\u23FF\u2460-\u27BF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]"
)


# ----------------------------------------------------------------------------- normalizations


def _latex_quotes(tok: str, left: bool) -> str:
    if left:
        tok = re.sub(r"&apos;|'", "`", tok)
        tok = re.sub(r"\"|&quot;", "``", tok)
    else:
        tok = re.sub(r"&apos;|'", "'", tok)
        tok = re.sub(r"\"|&quot;", "''", tok)
    tok = re.sub("[\u0091\u2018\u201B\u2039]", "`", tok)
    tok = re.sub("[\u0092\u2019\u203A]", "'", tok)
    tok = re.sub("[\u0093\u201C\u00AB]", "``", tok)
    tok = re.sub("[\u0094\u201D\u00BB]", "''", tok)
    return tok


def _currency(tok: str) -> str:
    tok = tok.replace("\u00A2", "cents").replace("\u00A3", "#")
    return re.sub("[\u0080\u00A4\u20A0\u20AC]", "$", tok)


_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3"}  # the jar maps no 2/3


def _soft(tok: str) -> str:
    return tok.replace("\u00AD", "")


def _hyphens(tok: str) -> str:
    return "--" if 3 <= len(tok) <= 4 else tok


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class _Rule:
    name: str
    main: "regex.Pattern"
    context: Optional["regex.Pattern"] = None
    # returns (token text or None to emit nothing, number of characters consumed)
    action: Optional[Callable[[str], tuple[Optional[str], int]]] = None


def _keep(s: str) -> tuple[Optional[str], int]:
    return s, len(s)


def _skip(s: str) -> tuple[Optional[str], int]:
    return None, len(s)


def _const(text: str) -> Callable[[str], tuple[Optional[str], int]]:
    return lambda s: (text, len(s))


def _map(fn: Callable[[str], str]) -> Callable[[str], tuple[Optional[str], int]]:
    return lambda s: (fn(s), len(s))


def _acronym_sentence_end(s: str) -> tuple[Optional[str], int]:
    # "I. He ..." -> "I" then "."; "U.S. The ..." -> "U.S." then "." (the period is re-read)
    if len(s) == 2:
        return s[:1], 1
    return s, len(s) - 1


def _abbrev_sentence_end(s: str) -> tuple[Optional[str], int]:
    return s, len(s) - 1


_NEWLINE = "\n"  # a line break of the joined input (never a token: tokens hold no "\n")

# other line separators become spaces before lexing (see the module docstring)
_OTHER_NEWLINES = re.compile("\r\n?|[\u2028\u2029\x0b\x0c\u0085]")


def _r(name: str, main: str, context: Optional[str] = None, action=_keep, posix: bool = True) -> _Rule:
    # POSIX = leftmost-longest over alternations, as JFlex matches; greedy backtracking is enough
    # (and much faster) for the two patterns marked posix=False, which have no competing branches
    flags = regex.POSIX if posix else 0
    return _Rule(name, regex.compile(main, flags), regex.compile(context, flags) if context else None, action)


RULES: list[_Rule] = [
    _r("cannot", r"(?i:cannot)", action=lambda s: (s[:3], 3)),
    _r("assim2", r"(?i:gonna|gotta|wanna|gimme|lemme)", action=lambda s: (s[:3], 3)),
    _r("tis", APOS + r"(?i:tis|twas)", action=lambda s: (_latex_quotes(s[:2], False), 2)),
    _r("sgml", SGML, action=_map(lambda s: s.replace(" ", "\u00A0"))),
    _r("proglang", r"(?i:c\+\+|c#|f#)"),
    _r("mdash", r"&(?i:md|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", action=_const("--")),
    _r("amp", r"&(?i:amp);", action=_const("&")),
    _r("sppunc", r"&(?i:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);"),
    _r("word_redaux", WORD, REDAUX, action=_map(_soft)),
    _r("sword_sredaux", SWORD, SREDAUX, action=_map(_soft)),
    _r("word", WORD, action=_map(_soft)),
    _r("apoword", APOWORD),
    _r("apoword2", r"[yY]" + APOS, L),
    _r("fullurl", FULLURL),
    _r("likelyurl", LIKELYURL),
    _r("email", EMAIL, posix=False),
    _r("smiley", SMILEY, r"[^\p{L}]|$", action=_map(lambda s: s.replace("(", "-LRB-").replace(")", "-RRB-"))),
    _r("twitter", rf"[@\uFF20][a-zA-Z_][a-zA-Z_0-9]*|[#\uFF03]{L}(?:{L}|{D}|_)*(?:{L}|{D})"),
    _r("redaux_ctx", REDAUX, r"[^A-Za-z]", action=_map(lambda s: _latex_quotes(s, False))),
    _r("sredaux", SREDAUX, action=_map(lambda s: _latex_quotes(s, False))),
    _r("date", rf"{D}{{1,2}}[-/]{D}{{1,2}}[-/]{D}{{2,4}}"),
    _r("number", NUMBER, action=_map(_soft)),
    _r("subsupnum", r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"),
    _r("frac", FRAC, action=_map(lambda s: s.replace(" ", "\u00A0"))),
    _r("frac2", "[\u00BC\u00BD\u00BE\u2153-\u215E]", action=_map(lambda s: _FRACTIONS.get(s, s))),
    _r(
        "tbspec",
        r"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c\.d\.s|pro-|anti-|s(?:&|&amp;)p-500|s(?:&|&amp;)ls)"
        + rf"|(?i:cap){APOS}[nN]|[cC]{APOS}(?i:est)",
        action=_map(lambda s: re.sub(r"(?i:&amp;)", "&", s)),
    ),
    _r("thing3", THING3, posix=False),
    _r("dolsign", r"[A-Z]*\$|#"),
    _r("dolsign2", "[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]", action=_map(_currency)),
    _r("acronym_end", ACRO + r"\.", rf"{SPACENL}+{STARTERS}(?:{SPACENL}|$)", action=_acronym_sentence_end),
    _r("abbrev1_end", ABBREV1, SENTEND, action=_abbrev_sentence_end),
    _r("abbrev1_any", ABBREV1, r"[\s\S]{2}"),  # beats a longer WORD like "etc.A"
    _r("abbrev1", ABBREV1, action=_abbrev_sentence_end),  # at the end of the input
    _r("abbrev3", ABBREV3, rf"{SPACENL}?{D}"),
    _r("abbrev2", ABBREV4 + r"\."),
    _r("abbrev4", ABBREV4, SPACE),
    _r("acro", ACRO, SPACENL),
    _r("tbspec2", APOS + r"[0-9][0-9]", SPACENL),
    _r("word_dot", WORD + r"\.", INSENTP, action=_map(_soft)),
    _r("phone", PHONE, action=_map(lambda s: s.replace(" ", "\u00A0").replace("(", "-LRB-").replace(")", "-RRB-"))),
    _r("dblquot_left", DBLQUOT, r"[A-Za-z0-9$]", action=_map(lambda s: _latex_quotes(s, True))),
    _r("dblquot", DBLQUOT, action=_map(lambda s: _latex_quotes(s, False))),
    _r("plus", r"\+"),
    _r("percent", "[%&\u2030\u2031]"),
    _r("tilde", r"[~^]"),
    _r("bar", r"[|\\\x7f]"),
    _r("lt", r"<|&(?i:lt);", action=_const("<")),
    _r("gt", r">|&(?i:gt);", action=_const(">")),
    _r("lsb", r"\[", action=_const("-LSB-")),
    _r("rsb", r"\]", action=_const("-RSB-")),
    _r("lcb", r"\{", action=_const("-LCB-")),
    _r("rcb", r"\}", action=_const("-RCB-")),
    _r("lrb", r"\(", action=_const("-LRB-")),
    _r("rrb", r"\)", action=_const("-RRB-")),
    _r("hyphens", r"-+", action=_map(_hyphens)),
    _r("ldots", r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]", action=_const("...")),
    _r("fnmarks", r"@+|#+|_+"),
    _r("asts", r"\*+|(?:\\\*){1,3}"),
    _r("insentp", INSENTP),
    _r("qmarks", r"[?!]+"),
    _r("period", "[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA]"),
    _r("equals", r"="),
    _r("slash", r"/"),
    _r("hthing_dot", HTHING + r"\.", INSENTP, action=_map(_soft)),
    _r("hthing", HTHING, action=_map(_soft)),
    _r("thing_dot", THING + r"\.", INSENTP),
    _r("thing", THING),
    _r("thinga_dot", THINGA + r"\.", INSENTP, action=_map(lambda s: re.sub(r"(?i:&amp;)", "&", s))),
    _r("thinga", THINGA, action=_map(lambda s: re.sub(r"(?i:&amp;)", "&", s))),
    _r("left_quote", r"'", r"[A-Za-z][^ \t\n\r\u00A0]", action=_map(lambda s: _latex_quotes(s, True))),
    _r("redaux", REDAUX, action=_map(lambda s: _latex_quotes(s, False))),
    _r("quotes", QUOTES, action=_map(lambda s: _latex_quotes(s, False))),
    _r("misc", MISC),
    _r("space", r"[ \t\u00A0\u2000-\u200A\u3000\u200B\u200E\u200F\uFEFF\x00]+", action=_skip),
    _r("newline", r"\n", action=_const(_NEWLINE)),
    _r("nbsp", r"&(?i:nbsp);", action=_skip),
]

# first characters that can start some rule; anything else in the BMP is kept as a one-character
# token (the 3.4.1 jar keeps most symbols), anything outside the BMP is dropped like the jar does


_LOOKAHEAD = 1024  # characters past the end of the current line that a trailing context may read
_PLAIN_WORD = re.compile(r"[A-Za-z]+(?=[ \n]|$)")
_ASSIMILATIONS = frozenset(["cannot", "gonna", "gotta", "wanna", "gimme", "lemme"])


def ptb_tokenize_lines(lines: list[str]) -> list[list[str]]:
    """Tokens of each line (original case), lexing the lines joined by newlines in one pass, as
    coco-caption feeds them to the jar (`-preserveLines`): a rule's look-ahead may see the next line."""
    text = "\n".join(_OTHER_NEWLINES.sub(" ", line.replace("\n", " ")) for line in lines)
    out: list[list[str]] = [[]]
    i, n = 0, len(text)
    line_end = -1
    while i < n:
        if i > line_end:
            # matches stay within their line plus a short look-ahead into the next one; bounding the
            # search window keeps `regex` from prescanning the whole remaining text on every call
            line_end = text.find("\n", i)
            line_end = n if line_end < 0 else line_end
            window = min(n, line_end + _LOOKAHEAD)
        # fast path (same result as the rules): a plain ASCII word followed by a space or a line end
        # is a token on its own; no rule can match longer there except to return the same word
        m = _PLAIN_WORD.match(text, i)
        if m and m.group(0).lower() not in _ASSIMILATIONS:
            out[-1].append(m.group(0))
            i = m.end()
            continue
        if text[i] == " ":
            i += 1
            continue
        best_len = 0
        best: Optional[tuple[_Rule, str]] = None
        for rule in RULES:
            m = rule.main.match(text, i, window)
            if not m or m.end() == i:
                continue
            total = m.end() - i
            if rule.context is not None:
                c = rule.context.match(text, m.end(), window)
                if not c:
                    continue
                total += c.end() - m.end()
            if total > best_len:
                best_len, best = total, (rule, m.group(0))
        if best is None:  # no rule: the jar keeps most BMP symbols as one-character tokens
            ch = text[i]
            if ord(ch) <= 0xFFFF and not _is_control(ch):
                out[-1].append(ch)
            i += 1
            continue
        rule, s = best
        tok, consumed = (rule.action or _keep)(s)
        if tok == _NEWLINE:
            out.append([])
        elif tok:
            out[-1].append(tok)
        i += consumed
    return out


def ptb_tokenize(text: str) -> list[str]:
    """Tokens of one caption as PTBTokenizer 3.4.1 prints them (original case)."""
    return ptb_tokenize_lines([text])[0]


def _is_control(ch: str) -> bool:
    o = ord(ch)
    return o < 0x20 or 0x7F <= o < 0xA0 or 0xD800 <= o <= 0xDFFF or o in (0x2010, 0x2011, 0x2012)


def coco_tokenize_corpus(texts: list[str]) -> list[str]:
    """coco-caption's preprocessing of one batch of captions (what `PTBTokenizer.tokenize` returns for
    them): PTB tokens, lower-cased, punctuation tokens removed, joined by single spaces."""
    return [
        " ".join(t for t in (tok.lower() for tok in toks) if t not in PUNCTUATIONS)
        for toks in ptb_tokenize_lines(list(texts))
    ]


def coco_tokenize(text: str) -> str:
    """`coco_tokenize_corpus` of one caption on its own."""
    return coco_tokenize_corpus([text])[0]
