"""Texts -> flat token ids + offsets, tokenized in chunks across threads, in input order.

Single texts under a WordPiece tokenizer go through nanotoken, which returns each chunk as one flat id buffer
plus row offsets (no per-row Python object) and matches the tokenizers library id for id; `wordpiece_twin`
builds it only when it loads the tokenizer.json and agrees with the tokenizers library on a corpus of awkward
texts, and truncation and windows are cut from its full encodings here, as the tokenizers library cuts them.
Everything else (text pairs, tokenizers nanotoken does not support) takes the tokenizers library.

The Rust tokenizers release the GIL while it encodes, so chunks run side by side on a small thread pool while
another thread holds the GIL to turn a finished chunk into arrays; `encode_batch_fast` skips the character
offsets scoring never reads (single texts; see _tokenize_chunk for pairs). Each call also spreads its chunk over the tokenizers library's own rayon pool,
whose size rayon takes from `std::thread::available_parallelism()` (CPU affinity and cgroup quota, like
`runtime.available_cpus`) unless RAYON_NUM_THREADS is set; bertbatch leaves that pool as the user set it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

CHUNK_ROWS = 512  # rows per tokenizer call: enough to amortise the call, small enough to spread over threads
# nanotoken's per-thread word-piece caches: its default (2**20 entries a level, ~130 MiB a thread when full)
# would cost ~2 GiB on a 16-thread GPU host. Measured (tokenizer alone, 2 threads): 2**16 as fast as the default
# on SMS texts and 2x faster on random words (the table stays in CPU cache), but a stream of 100k distinct words
# still grew peak RSS by ~40 MB; 2**14 grew it ~20 MB, at 0.84x the tokenizer-alone speed on SMS (3.0M rows/s,
# 50x the tokenizers library). NANOTOKEN_CACHE_ENTRIES, when set, wins.
NANOTOKEN_CACHE_ENTRIES = 1 << 14


@dataclass
class Tokens:
    """Token segments as flat arrays: segment s is ids[offsets[s]:offsets[s + 1]], from input owner[s]."""

    ids: np.ndarray  # int64, every segment's ids concatenated
    offsets: np.ndarray  # int64, (segments + 1,)
    types: np.ndarray | None  # token type ids laid out like `ids`; None when the caller did not ask for them
    owner: np.ndarray  # int64, (segments,): index of the input each segment came from
    truncated: np.ndarray  # bool, (inputs,)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def ascii_twin(tokenizer, serialized: str | None = None):
    """The same tokenizer without the normalizer steps that cannot change ASCII text, or None.

    BERT's normalizer looks up every character's Unicode category to pad CJK ideographs and strips accents
    through an NFD decomposition; on ASCII text both are no-ops (no ideographs; NFD of ASCII is itself, with
    no combining marks to strip), so ASCII rows can skip them (~14% of the tokenizer's time on SMS texts).
    `serialized`: `tokenizer.to_str()` when the caller has it (a copy is made from it)."""
    from tokenizers import Tokenizer, normalizers

    # the normalizer's own JSON, not the whole tokenizer's (its vocabulary is most of a ~0.5 MB document)
    spec = json.loads(tokenizer.normalizer.__getstate__()) if tokenizer.normalizer is not None else {}
    if spec.get("type") != "BertNormalizer":
        return None
    lowercase = bool(spec.get("lowercase", True))
    strip = spec.get("strip_accents")
    if not spec.get("handle_chinese_chars", True) and not (lowercase if strip is None else strip):
        return None  # nothing to skip
    twin = Tokenizer.from_str(serialized or tokenizer.to_str())
    twin.normalizer = normalizers.BertNormalizer(clean_text=bool(spec.get("clean_text", True)),
                                                 handle_chinese_chars=False, strip_accents=False, lowercase=lowercase)
    return twin


# Texts on which a WordPiece twin must give the tokenizers library's ids before it is used: accents and
# combining marks, CJK, emoji and joiners, control, zero-width and exotic whitespace, case traps, special
# tokens written in the text, an overlong word, punctuation runs.
AWKWARD_TEXTS = (
    "Héllo, WORLD! Ça va? naïve café", "Cafe\u0301 e\u0301te\u0301 Å Ω ß ﬁ ǅ", "中文字符和日本語のテキスト 한국어",
    "emoji 👍🏽 family 👨‍👩‍👧 flag 🇫🇷", "tab\there\nnew\r\nline\x0bvt\x0cff\x00nul\u200bzw\u00a0nbsp\u3000ideo",
    "İstanbul ΣΊΣΥΦΟΣ straße", "[CLS] [SEP] [PAD] [MASK] [UNK] inside text[SEP]x",
    "a" * 150 + " supercalifragilisticexpialidocious", "...!!!???---___***", "don't won't it's U.S.A. 3.14 1,000",
    "\u0000\ufffd\ud7ff\ue000 private use", "Ｆｕｌｌｗｉｄｔｈ ＡＳＣＩＩ", "مرحبا بالعالم שלום עולם", "x" * 5 + "\u0301" * 5,
)


def wordpiece_twin(tokenizer, serialized: str | None = None):
    """nanotoken's WordPiece over `tokenizer`'s tokenizer.json, or None: not installed, a tokenizer it does not
    support, a single-text template that types tokens, or any id differing from `tokenizer` on AWKWARD_TEXTS.
    `serialized`: `tokenizer.to_str()` when the caller has it. Not while another thread uses `tokenizer`: the
    probe encodes with its truncation off (and restores it)."""
    try:
        import nanotoken
    except ImportError:
        return None
    if "NANOTOKEN_CACHE_ENTRIES" not in os.environ:
        nanotoken.set_cache_entries(NANOTOKEN_CACHE_ENTRIES)
    try:
        twin = nanotoken.Tokenizer.from_json(serialized or tokenizer.to_str())
    except ValueError:  # UnsupportedTokenizerError: a normalizer, model or template it does not implement
        return None
    encodings = _untruncated_encodings(tokenizer, list(AWKWARD_TEXTS))
    if any(any(e.type_ids) for e in encodings):  # a template that types single texts: types are not cut here
        return None
    expected = [e.ids for e in encodings]
    got = twin.encode_batch(list(AWKWARD_TEXTS), parallel=False)
    if [got[i].tolist() for i in range(len(got))] != expected:
        log.warning("nanotoken disagrees with the tokenizers library on this tokenizer: using the slower library")
        return None
    return twin


def _untruncated_encodings(tokenizer, texts: list[str]) -> list:
    """`tokenizer`'s full encodings of `texts`, its truncation switched off meanwhile (no copy of it needed)."""
    truncation = tokenizer.truncation
    tokenizer.no_truncation()
    try:
        return tokenizer.encode_batch(texts, add_special_tokens=True)
    finally:
        if truncation:
            tokenizer.enable_truncation(**truncation)


TRUNCATIONS = ("head", "tail", "head+tail")


def default_head_tokens(max_length: int) -> int:
    """head+tail's head share when none is given: a quarter of the segment, as Sun et al. 2019 kept 128 head
    and 382 tail tokens of 512 (so 32 head and 94 tail text tokens at 128)."""
    return max_length // 4


def check_truncation(truncation: str, head_tokens: int | None) -> None:
    if truncation not in TRUNCATIONS:
        raise InputError(f"--truncation must be head, tail or head+tail; got '{truncation}'.")
    if head_tokens is not None and head_tokens < 0:
        raise InputError(f"--head-tokens must be 0 or more; got {head_tokens}.")


def untruncated(tokenizer):
    """A copy of `tokenizer` that never truncates: tail and head+tail cut its full encodings themselves."""
    full = type(tokenizer).from_str(tokenizer.to_str())
    full.no_truncation()
    return full


def tokenize(tokenizer, inputs: list, max_length: int, window: bool, types: bool, pool=None,
             chunk_rows: int = CHUNK_ROWS, ascii_tokenizer=None, wordpiece=None, truncation: str = "head",
             head_tokens: int | None = None, full_tokenizer=None) -> Tokens:
    """Encode `inputs` (texts, or (text, pair) tuples) with truncation at `max_length`.

    window: every overflowing piece becomes a segment right after its row's first one (else only the first).
    types: also return token type ids. pool: a concurrent.futures executor; chunks run on it, order kept.
    ascii_tokenizer: `ascii_twin(tokenizer)`, used for single texts that are pure ASCII.
    wordpiece: `wordpiece_twin(tokenizer)`, used for single texts when token types are not asked for.
    truncation: which text tokens a text longer than a segment keeps: the first ones (head), the last ones
    (tail), or `head_tokens` first and the rest of the room last (head+tail), always inside the template's
    special tokens. Windows cover the whole text whatever it says; text pairs take head only.
    full_tokenizer: `untruncated(tokenizer)`, made here when tail or head+tail needs it and none is given."""
    chunks = [inputs[i:i + chunk_rows] for i in range(0, len(inputs), chunk_rows)]
    stride = (tokenizer.truncation or {}).get("stride", 0)
    paired = bool(inputs) and isinstance(inputs[0], tuple)
    if truncation != "head" and paired and not window:
        raise InputError(f"--truncation {truncation} cuts single texts only; text pairs take --truncation head.")
    if truncation != "head" and not window:
        head = default_head_tokens(max_length) if head_tokens is None else head_tokens
        head = 0 if truncation == "tail" else head
        if wordpiece is not None and inputs and not types and _fits_template(wordpiece, max_length, 0):
            def work(chunk):
                full = wordpiece.encode_batch(chunk, parallel=False)
                prefix, suffix = len(wordpiece.backend.prefix_ids), len(wordpiece.backend.suffix_ids)
                return _cut(full.ids.astype(np.int64), full.offsets, None, prefix, suffix, max_length, head)
        else:
            full_tokenizer = full_tokenizer or untruncated(tokenizer)
            prefix, suffix = _template_ends(full_tokenizer)

            def work(chunk):
                return _cut_encodings(full_tokenizer.encode_batch_fast(chunk, add_special_tokens=True), types,
                                      prefix, suffix, max_length, head)
    elif wordpiece is not None and inputs and not types and not paired \
            and _fits_template(wordpiece, max_length, stride if window else 0):
        def work(chunk):
            return _wordpiece_chunk(wordpiece, chunk, max_length, window, stride)
    else:
        def work(chunk):
            return _tokenize_chunk(tokenizer, chunk, max_length, window, types, ascii_tokenizer)

    parts = list(pool.map(work, chunks)) if pool is not None and len(chunks) > 1 else [work(c) for c in chunks]
    return concat(parts)


def _fits_template(wordpiece, max_length: int, stride: int) -> bool:
    """Whether a segment of `max_length` leaves room for text after the special tokens, and windows advance."""
    room = max_length - len(wordpiece.backend.prefix_ids) - len(wordpiece.backend.suffix_ids)
    return room > 0 and room - stride > 0


def _template_ends(full_tokenizer) -> tuple[int, int]:
    """How many special tokens the single-text template puts before and after the text."""
    sequence = full_tokenizer.encode("a", add_special_tokens=True).sequence_ids
    prefix = next(i for i, s in enumerate(sequence) if s is not None)
    suffix = next(i for i, s in enumerate(reversed(sequence)) if s is not None)
    return prefix, suffix


def _cut_encodings(encodings: list, types: bool, prefix: int, suffix: int, max_length: int, head: int) -> Tokens:
    """Untruncated encodings from the tokenizers library as flat arrays, cut by `_cut`."""
    lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
    ids = _flatten([e.ids for e in encodings], lengths)
    type_ids = _flatten([e.type_ids for e in encodings], lengths) if types else None
    return _cut(ids, _offsets(lengths), type_ids, prefix, suffix, max_length, head)


def _cut(ids: np.ndarray, offsets: np.ndarray, types: np.ndarray | None, prefix: int, suffix: int,
         max_length: int, head: int) -> Tokens:
    """Full encodings (template's `prefix` and `suffix` special tokens around each text) cut to `max_length`:
    a text longer than the room keeps its first `head` tokens and its last `room - head` (head 0 = tail),
    its special tokens around them; shorter texts are kept whole. Each row is cut on its own, so the result
    does not depend on which rows share a call."""
    n = len(offsets) - 1
    room = max_length - prefix - suffix
    text_len = np.diff(offsets) - prefix - suffix
    truncated = text_len > room
    if not truncated.any():
        return Tokens(ids, offsets, types, np.arange(n, dtype=np.int64), truncated)
    head = min(head, room)
    heads = np.where(truncated, head, text_len)  # a row kept whole is all head
    tails = np.where(truncated, room - head, 0)
    starts, ends = offsets[:-1], offsets[1:]
    # per row: prefix, head text, tail text, suffix, as (start, length) runs in the full encoding
    runs_start = np.stack([starts, starts + prefix, ends - suffix - tails, ends - suffix], axis=1).ravel()
    runs_len = np.stack([np.full(n, prefix), heads, tails, np.full(n, suffix)], axis=1).ravel()
    positions = _ranges(runs_start, runs_len)
    out_offsets = _offsets(prefix + heads + tails + suffix)
    return Tokens(ids[positions], out_offsets, None if types is None else types[positions],
                  np.arange(n, dtype=np.int64), truncated)


def _wordpiece_chunk(wordpiece, inputs: list, max_length: int, window: bool, stride: int) -> Tokens:
    """Full encodings from nanotoken, cut as the tokenizers library truncates a single text: at most
    max_length - specials text tokens per segment, the next window starting `stride` tokens before the last
    one ended, and the template's special tokens around each segment."""
    full = wordpiece.encode_batch(inputs, parallel=False)  # our pool runs chunks side by side; no fork hazard
    ids, offsets = full.ids.astype(np.int64), full.offsets
    n = len(inputs)
    prefix = np.asarray(wordpiece.backend.prefix_ids, dtype=np.int64)
    suffix = np.asarray(wordpiece.backend.suffix_ids, dtype=np.int64)
    room = max_length - len(prefix) - len(suffix)
    text_len = np.diff(offsets) - len(prefix) - len(suffix)
    truncated = text_len > room
    if not truncated.any():
        return Tokens(ids, offsets, None, np.arange(n, dtype=np.int64), truncated)
    step = room - stride
    pieces = np.ones(n, dtype=np.int64)
    if window:  # windows start at 0, step, 2*step, ... until one reaches the text's end
        pieces[truncated] = -(-(text_len[truncated] - room) // step) + 1
    owner = np.repeat(np.arange(n, dtype=np.int64), pieces)
    piece = np.arange(len(owner), dtype=np.int64) - np.repeat(_offsets(pieces)[:-1], pieces)
    kept = np.minimum(room, text_len[owner] - piece * step)
    out_offsets = _offsets(kept + len(prefix) + len(suffix))
    out = np.empty(int(out_offsets[-1]), dtype=np.int64)
    source = _ranges(offsets[owner] + len(prefix) + piece * step, kept)
    out[_ranges(out_offsets[:-1] + len(prefix), kept)] = ids[source]
    if len(prefix):
        out[(out_offsets[:-1, None] + np.arange(len(prefix))).ravel()] = np.tile(prefix, len(owner))
    if len(suffix):
        out[(out_offsets[1:, None] - len(suffix) + np.arange(len(suffix))).ravel()] = np.tile(suffix, len(owner))
    return Tokens(out, out_offsets, None, owner, truncated)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """starts[0], starts[0] + 1, ..., then the same for each start: lengths[i] positions from starts[i]."""
    within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(_offsets(lengths)[:-1], lengths)
    return np.repeat(starts, lengths) + within


def _encode(tokenizer, inputs: list, ascii_tokenizer=None) -> list:
    """Encodings of `inputs` in order; pure-ASCII single texts through `ascii_tokenizer` when given."""
    if not inputs:
        return []
    if isinstance(inputs[0], tuple):
        # encode_batch_fast gives text pairs' overflowing pieces wrong token type ids (tokenizers 0.22.2: a
        # piece [CLS] a [SEP] b [SEP] typed 0...0 1); pairs take the full encode, which types them like the first
        return tokenizer.encode_batch(inputs, add_special_tokens=True)
    if ascii_tokenizer is None:
        return tokenizer.encode_batch_fast(inputs, add_special_tokens=True)
    plain = [text.isascii() for text in inputs]
    rest = [i for i, p in enumerate(plain) if not p]
    if not rest:
        return ascii_tokenizer.encode_batch_fast(inputs, add_special_tokens=True)
    if len(rest) == len(inputs):
        return tokenizer.encode_batch_fast(inputs, add_special_tokens=True)
    easy = iter(ascii_tokenizer.encode_batch_fast([t for t, p in zip(inputs, plain) if p], add_special_tokens=True))
    hard = iter(tokenizer.encode_batch_fast([inputs[i] for i in rest], add_special_tokens=True))
    return [next(easy) if p else next(hard) for p in plain]


def _tokenize_chunk(tokenizer, inputs: list, max_length: int, window: bool, types: bool,
                    ascii_tokenizer=None) -> Tokens:
    encodings = _encode(tokenizer, inputs, ascii_tokenizer)
    n = len(encodings)
    ids = [e.ids for e in encodings]
    type_ids = [e.type_ids for e in encodings] if types else None
    lengths = np.fromiter(map(len, ids), np.int64, n)
    truncated = np.zeros(n, dtype=bool)
    extra_ids, extra_types, extra_owner = [], [], []
    # truncation leaves exactly max_length tokens, so only rows that long can have overflowing pieces
    for row in np.flatnonzero(lengths >= max_length).tolist():
        pieces = encodings[row].overflowing
        truncated[row] = bool(pieces)
        if window:
            extra_ids += [p.ids for p in pieces]
            extra_types += [p.type_ids for p in pieces] if types else []
            extra_owner += [row] * len(pieces)
    owner = np.arange(n, dtype=np.int64)
    if extra_ids:
        ids += extra_ids
        type_ids = type_ids + extra_types if types else None
        lengths = np.concatenate([lengths, np.fromiter(map(len, extra_ids), np.int64, len(extra_ids))])
        owner = np.concatenate([owner, np.asarray(extra_owner, dtype=np.int64)])
    tokens = Tokens(_flatten(ids, lengths), _offsets(lengths), _flatten(type_ids, lengths) if types else None,
                    owner, truncated)
    if extra_ids:  # each row's pieces right after its first segment, in the tokenizer's order
        tokens = take_segments(tokens, np.argsort(owner, kind="stable"))
    return tokens


def _flatten(lists: list, lengths: np.ndarray) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(lists), np.int64, int(lengths.sum()))


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def segment_positions(offsets: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Positions in the flat arrays of the tokens of `segments`, segment after segment."""
    return _ranges(offsets[segments], offsets[segments + 1] - offsets[segments])


def take_segments(tokens: Tokens, order: np.ndarray) -> Tokens:
    """The segments in `order` (a permutation of them), flat arrays rebuilt to match."""
    positions = segment_positions(tokens.offsets, order)
    return Tokens(tokens.ids[positions], _offsets(tokens.lengths[order]),
                  None if tokens.types is None else tokens.types[positions], tokens.owner[order], tokens.truncated)


def concat(parts: list[Tokens]) -> Tokens:
    """Chunks' tokens as one, inputs numbered across chunks in order."""
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Tokens(empty, np.zeros(1, dtype=np.int64), empty, empty, np.zeros(0, dtype=bool))
    if len(parts) == 1:
        return parts[0]
    firsts = np.cumsum([0] + [len(p.truncated) for p in parts[:-1]])
    types = None if parts[0].types is None else np.concatenate([p.types for p in parts])
    return Tokens(
        np.concatenate([p.ids for p in parts]),
        _offsets(np.concatenate([p.lengths for p in parts])),
        types,
        np.concatenate([p.owner + first for p, first in zip(parts, firsts)]),
        np.concatenate([p.truncated for p in parts]),
    )
