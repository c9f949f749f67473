"""Scoring: texts -> tokens -> length-sorted token-budget batches -> runner -> labels, in input order.

`Scorer` scores in-memory texts and Arrow record batches; `pipeline.score_file` streams tables through it.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .batching import DEFAULT_BUDGET, GPU_BUCKETS, pad_rows, plan_batches
from .config import ScoreConfig
from .embedding import embedding_size
from .errors import InputError, ModelError
from .modeldir import ModelDir
from .runtime import CUDA, OrtRunner, Runner, TorchRunner, available_cpus, resolve_provider
from .tokenize import Tokens, ascii_twin, default_head_tokens, tokenize, untruncated, wordpiece_twin
from .settings import choose_settings
from .temperature import recorded_temperature

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """A window of rows, tokenized and planned; rows without usable text are set aside with a reason."""

    n: int
    tokens: Tokens  # one segment per model input (several per row in window mode); owner = row index
    errors: list  # (n,) None or reason
    plan: list = field(default_factory=list)

    @property
    def owner(self) -> np.ndarray:
        return self.tokens.owner

    @property
    def truncated(self) -> np.ndarray:
        return self.tokens.truncated


@dataclass
class Result:
    probs: np.ndarray  # (n, k) float32, NaN for rows with an error
    logits: np.ndarray  # (n, k) float32
    truncated: np.ndarray
    errors: list
    windows: np.ndarray  # (n,) segments per row
    real_tokens: int
    padded_tokens: int
    embeddings: np.ndarray | None = None  # (n, hidden) float32 with --embeddings, NaN for rows with an error


class Scorer:
    """Score texts with a model directory's ONNX graph (or its PyTorch weights when no graph exists)."""

    def __init__(self, model_dir: str | Path, config: ScoreConfig | None = None, runner: Runner | None = None,
                 **overrides):
        from dataclasses import replace

        self.config = config = replace(config or ScoreConfig(), **overrides)
        self.model = ModelDir.open(model_dir)
        # options checked against the model before its graph is loaded: nothing impossible reaches a kernel
        check_model_options(self.model, config)
        self.max_length = min(config.max_length or self.model.max_length, self.model.max_length)
        window = config.long_text == "window"
        self.tokenizer = self.model.tokenizer(self.max_length, stride=config.stride if window else 0)
        check_lengths(self.tokenizer, self.max_length, config)
        settings = None
        if runner is None:
            provider = resolve_provider(config.provider)
            # graph, budget and threads: explicit options, else this machine's tune record, else safe defaults
            settings = choose_settings(self.model, config, provider)
            graph = self.model.graph_path(settings.graph, provider)
            if graph is None and config.graph != "torch":
                log.warning("%s has no ONNX graph: scoring with PyTorch (slow). Run `bertbatch export` first.", model_dir)
            if graph is None:
                runner = TorchRunner(self.model.path, threads=config.threads, allow_pickle=config.allow_pickle)
            else:
                runner = OrtRunner(graph, provider, settings.threads)
        self.runner: Runner = runner
        self.settings_reason = settings.reason if settings else "runner given by the caller"
        # the pre-Protocol name kept for callers that read it: the graph's path, "torch", or "custom" for a
        # runner the caller built that runs no file (new code reads graph_file)
        self.graph = runner.graph or ("torch" if isinstance(runner, TorchRunner) else "custom")
        # the recorded temperature(s) that divide the logits before softmax/sigmoid; None: raw probabilities
        self.temperature = (recorded_temperature(self.model.manifest, self.model.labels, self.model.multi_label)
                            if config.calibration == "auto" else None)
        on_gpu = runner.provider == CUDA
        self.buckets = GPU_BUCKETS if on_gpu else None
        default_tokens, default_rows = DEFAULT_BUDGET["cuda" if on_gpu else "cpu"]
        self.max_tokens = config.max_tokens or (settings.max_tokens if settings else default_tokens)
        self.max_batch_rows = config.max_batch_rows or (settings.max_batch_rows if settings else default_rows)
        self.oom_splits = 0
        self.tokenize_threads = min(config.threads or available_cpus(), available_cpus())
        self._pool: ThreadPoolExecutor | None = None
        self._single_types = any(self.tokenizer.encode("a").type_ids)
        serialized = self.tokenizer.to_str()  # once, for both twins
        self._ascii_tokenizer = ascii_twin(self.tokenizer, serialized)
        self._wordpiece = wordpiece_twin(self.tokenizer, serialized) if config.tokenizer_backend == "auto" else None
        self.truncation, self.head_tokens = resolve_truncation(self.model, config, self.max_length)
        if self.truncation != "head" and not window and config.text_pair_column:
            raise InputError(f"--truncation {self.truncation} cuts single texts only; for text pairs pass "
                             "--truncation head (or --long-text window).")
        self._full_tokenizer = untruncated(self.tokenizer) if self.truncation != "head" and not window else None
        check_consistency(self.model, self.tokenizer, runner)
        self.embedding_size = check_embeddings(self.model, runner) if config.embeddings else None

    @property
    def calibration(self) -> dict | None:
        """The calibration applied to probabilities and scores (in job fingerprints and summaries), or None."""
        if self.temperature is None:
            return None
        return {"method": self.model.manifest["calibration"]["method"],
                "temperature": [float(t) for t in self.temperature]}

    @property
    def tokenizer_backend(self) -> str:
        """Which library tokenizes single texts: nanotoken (same ids, flat arrays) or the tokenizers library."""
        return "nanotoken" if self._wordpiece is not None else "tokenizers"

    @property
    def truncation_label(self) -> str:
        """What the run summary says was read of long texts: head, tail, head+tail:N, or window."""
        return truncation_label(self.truncation, self.head_tokens, self.config.long_text == "window")

    @property
    def graph_file(self) -> Path | None:
        """The ONNX file that runs (hashed into outputs and job fingerprints), or None when the runner runs no
        file (PyTorch on the checkpoint's weights, or a runner the caller built)."""
        return Path(self.runner.graph) if self.runner.graph else None

    # -- stage 1: tokenize and plan (runs in a background thread in score_file)
    def encode(self, texts: list, pairs: list | None = None) -> Encoded:
        """Tokenize and plan in-memory texts (any Python objects: those that are not usable text get an error)."""
        n = len(texts)
        errors: list = [None] * n
        valid = []
        for i, text in enumerate(texts):
            if text is None:
                errors[i] = "null text"
            elif not isinstance(text, str):
                errors[i] = f"text is {type(text).__name__}, not a string"
            elif not text.strip():
                errors[i] = "empty text"
            elif not text.isascii() and _has_lone_surrogate(text):
                errors[i] = "text has a lone surrogate (not valid Unicode); decode it with errors='replace'"
            else:
                valid.append(i)
        inputs = [texts[i] for i in valid] if pairs is None else [(texts[i], pairs[i] or "") for i in valid]
        return self._encode_valid(n, np.asarray(valid, dtype=np.int64), inputs, pairs is not None, errors)

    def encode_arrays(self, texts: pa.Array, pairs: pa.Array | None = None) -> Encoded:
        """`encode` on Arrow string arrays: which rows are null or blank is decided on the arrays, and only the
        usable texts become Python strings (the tokenizer takes nothing else)."""
        if not all(pa.types.is_string(a.type) or pa.types.is_large_string(a.type)
                   for a in ([texts] if pairs is None else [texts, pairs])):
            return self.encode(texts.to_pylist(), None if pairs is None else pairs.to_pylist())
        n = len(texts)
        null = texts.is_null().to_numpy(zero_copy_only=False)
        blank = pc.match_substring_regex(texts, blank_pattern()).fill_null(False).to_numpy(zero_copy_only=False)
        errors: list = [None] * n
        for i in np.flatnonzero(null).tolist():
            errors[i] = "null text"
        for i in np.flatnonzero(blank).tolist():
            errors[i] = "empty text"
        usable = ~(null | blank)
        valid = np.flatnonzero(usable)
        chosen = texts if len(valid) == n else texts.filter(pa.array(usable))
        if pairs is None:
            inputs = chosen.to_pylist()
        else:
            second = pairs if len(valid) == n else pairs.filter(pa.array(usable))
            inputs = list(zip(chosen.to_pylist(), second.fill_null("").to_pylist()))
        return self._encode_valid(n, valid, inputs, pairs is not None, errors)

    def _encode_valid(self, n: int, valid: np.ndarray, inputs: list, paired: bool, errors: list) -> Encoded:
        # token type ids are all zero for single texts under BERT-style templates; read them only when the graph
        # takes them and they can be otherwise (pairs, or a template that types single texts)
        types = "token_type_ids" in self.runner.input_names and (paired or self._single_types)
        tokens = tokenize(self.tokenizer, inputs, self.max_length, self.config.long_text == "window", types,
                          pool=self._tokenizer_pool(), ascii_tokenizer=self._ascii_tokenizer,
                          wordpiece=self._wordpiece, truncation=self.truncation, head_tokens=self.head_tokens,
                          full_tokenizer=self._full_tokenizer)
        tokens.owner = valid[tokens.owner]
        truncated = np.zeros(n, dtype=bool)
        truncated[valid] = tokens.truncated
        tokens.truncated = truncated
        encoded = Encoded(n, tokens, errors)
        encoded.plan = plan_batches(
            tokens.lengths, self.max_tokens, self.max_batch_rows, self.max_length, buckets=self.buckets,
        )
        return encoded

    def _tokenizer_pool(self) -> ThreadPoolExecutor | None:
        """Threads that feed the tokenizer chunks side by side (it releases the GIL); as many as ONNX Runtime
        may use, made on first use."""
        if self._pool is None and self.tokenize_threads > 1:
            self._pool = ThreadPoolExecutor(self.tokenize_threads, thread_name_prefix="bertbatch-tokenize")
        return self._pool

    # -- stage 2: run the planned batches and aggregate per row
    def run(self, encoded: Encoded) -> Result:
        k = len(self.model.labels)
        tokens = encoded.tokens
        seg_logits = np.empty((len(tokens.owner), k), dtype=np.float32)
        width = self.embedding_size
        seg_vectors = np.empty((len(tokens.owner), width), dtype=np.float32) if width else None
        real = padded = 0
        for batch in encoded.plan:
            ids, mask = pad_rows(tokens.ids, tokens.offsets, batch.rows, batch.length)
            types = np.zeros_like(ids) if tokens.types is None else pad_rows(tokens.types, tokens.offsets,
                                                                               batch.rows, batch.length)[0]
            logits = self._run_halving(ids, mask, types)
            if width:
                logits, vectors = logits
                if vectors.shape != (len(batch.rows), width):
                    raise ModelError(f"The graph returned embeddings of shape {vectors.shape}; expected "
                                     f"({len(batch.rows)}, {width}).")
                seg_vectors[batch.rows] = vectors
            if logits.shape != (len(batch.rows), k):
                raise ModelError(f"The graph returned logits of shape {logits.shape}; expected ({len(batch.rows)}, {k}).")
            seg_logits[batch.rows] = logits
            real += int(mask.sum())
            padded += mask.size
        # a calibration is a division after the graph: each row's values stay independent of its batch-mates
        scaled = seg_logits if self.temperature is None else seg_logits / self.temperature
        seg_probs = _sigmoid(scaled) if self.model.multi_label else _softmax(scaled)
        probs = np.full((encoded.n, k), np.nan, dtype=np.float32)
        logits = np.full((encoded.n, k), np.nan, dtype=np.float32)
        windows = np.bincount(encoded.owner, minlength=encoded.n)
        if len(encoded.owner) and windows.max() == 1:  # one segment per row: its values are the row's (mean or max)
            probs[encoded.owner] = seg_probs
            logits[encoded.owner] = seg_logits
        elif len(encoded.owner):
            if self.config.aggregate == "max":
                np.fmax.at(probs, encoded.owner, seg_probs)
                np.fmax.at(logits, encoded.owner, seg_logits)
            else:  # mean over each row's windows (exactly the row's values when it has one)
                sums_p = np.zeros_like(probs)
                sums_l = np.zeros_like(logits)
                np.add.at(sums_p, encoded.owner, seg_probs)
                np.add.at(sums_l, encoded.owner, seg_logits)
                has = windows > 0
                probs[has] = sums_p[has] / windows[has, None]
                logits[has] = sums_l[has] / windows[has, None]
        vectors = None if seg_vectors is None else _row_means(seg_vectors, encoded.owner, windows, encoded.n)
        return Result(probs, logits, encoded.truncated, encoded.errors, windows, real, padded, vectors)

    def _run_halving(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray):
        """Run a batch; on an allocation failure, split it in halves and retry the same rows (never skip).
        Logits, or (logits, embeddings) with --embeddings."""
        try:
            if self.embedding_size:
                return self.runner.run(ids, mask, types, embeddings=True)
            return self.runner.run(ids, mask, types)
        except Exception as exc:  # ORT raises RuntimeException/Fail; torch raises RuntimeError
            if not is_out_of_memory(exc) or len(ids) == 1:
                raise
            half = len(ids) // 2
            log.warning("Out of memory on a %dx%d batch; retrying it as two halves.", *ids.shape)
            self.oom_splits += 1
            first = self._run_halving(ids[:half], mask[:half], types[:half])
            second = self._run_halving(ids[half:], mask[half:], types[half:])
            if isinstance(first, tuple):
                return np.vstack([first[0], second[0]]), np.vstack([first[1], second[1]])
            return np.vstack([first, second])

    def encode_batch(self, batch: pa.RecordBatch) -> Encoded:
        """`encode` on the text (and pair) columns of an Arrow record batch."""
        pair = self.config.text_pair_column
        return self.encode_arrays(batch.column(self.config.text_column), batch.column(pair) if pair else None)

    def label_batch(self, batch: pa.RecordBatch, keep: list[str]) -> pa.RecordBatch:
        """Score one Arrow record batch: the `keep` columns, then the result columns (same rows, same order)."""
        return self.assemble(batch, keep, self.run(self.encode_batch(batch)))

    def assemble(self, batch: pa.RecordBatch, keep: list[str], result: Result) -> pa.RecordBatch:
        columns = {name: batch.column(name) for name in keep}
        columns.update(result_columns(result, self.model.labels, self.model.multi_label, self.config))
        return pa.RecordBatch.from_pydict(columns)

    def output_schema(self, kept: pa.Schema) -> pa.Schema:
        """`output_schema` for this scorer's model and options."""
        return output_schema(kept, self.model.labels, self.model.multi_label, self.config, self.embedding_size)

    def logits(self, texts: list, pairs: list | None = None) -> Result:
        return self.run(self.encode(list(texts), pairs))

    def predict(self, texts: list, pairs: list | None = None) -> list[dict]:
        """Labels for in-memory texts: [{'label', 'score', 'probs', 'truncated', 'error'}] in input order;
        with embeddings on, 'embedding' is the row's float32 numpy vector (None for a row with an error)."""
        result = self.logits(texts, pairs)
        columns = result_columns(result, self.model.labels, self.model.multi_label, self.config)
        columns.pop("embedding", None)
        table = pa.table(columns)
        rows = table.to_pylist()
        for i, (row, p) in enumerate(zip(rows, result.probs)):
            row["probs"] = None if np.isnan(p).any() else dict(zip(self.model.labels, map(float, p)))
            if result.embeddings is not None:
                row["embedding"] = None if row["error"] is not None else result.embeddings[i].copy()
        return rows


def resolve_truncation(model: ModelDir, config: ScoreConfig, max_length: int) -> tuple[str, int]:
    """(strategy, head tokens) that run: the option when given, else what train recorded in the model
    directory; a model trained before strategies were recorded read heads only."""
    recorded = model.manifest.get("truncation") or {}
    strategy = config.truncation or recorded.get("strategy", "head")
    head = config.head_tokens if config.head_tokens is not None else recorded.get("head_tokens")
    return strategy, int(default_head_tokens(max_length) if head is None else head)


def truncation_label(strategy: str, head_tokens: int, window: bool) -> str:
    """How the summary names what ran: `head`, `tail`, `head+tail:32`, or `window` (windows cover it all)."""
    if window:
        return "window"
    return f"head+tail:{head_tokens}" if strategy == "head+tail" else strategy


def result_schema(labels: list[str], multi_label: bool, config: ScoreConfig,
                  embedding_size: int | None = None) -> pa.Schema:
    """Arrow types of the result columns, from the same code that builds them (an empty result).
    embedding_size: the embedding's width, needed with --embeddings (the column is a fixed-size list)."""
    k = len(labels)
    if config.embeddings and not embedding_size:
        raise ValueError("result_schema with embeddings on needs embedding_size (the column is a fixed-size list)")
    vectors = np.zeros((0, embedding_size), np.float32) if config.embeddings else None
    empty = Result(np.zeros((0, k), np.float32), np.zeros((0, k), np.float32), np.zeros(0, bool), [],
                   np.zeros(0, np.int64), 0, 0, vectors)
    return pa.schema([pa.field(n, a.type) for n, a in result_columns(empty, labels, multi_label, config).items()])


def output_schema(kept: pa.Schema, labels: list[str], multi_label: bool, config: ScoreConfig,
                  embedding_size: int | None = None) -> pa.Schema:
    """Kept input columns, then the result columns; an input column with a result column's name is refused
    (it would be overwritten, or duplicated, silently)."""
    results = result_schema(labels, multi_label, config, embedding_size)
    clash = [name for name in kept.names if name in results.names]
    if clash:
        others = [name for name in kept.names if name not in clash]
        raise InputError(
            f"Input column(s) {clash} have the names of bertbatch's output columns {results.names}. Rename them, "
            f"or leave them out with --keep {','.join(others) or 'COLUMNS'}."
        )
    return pa.schema(list(kept) + list(results))


OOM_MARKERS = ("out of memory", "failed to allocate", "bad_alloc", "alloc_failed", "cudaerrormemoryallocation")


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in OOM_MARKERS)


def _has_lone_surrogate(text: str) -> bool:
    """Python strings may hold surrogate code points no UTF-8 (and so no tokenizer) accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_model_options(model: ModelDir, config: ScoreConfig) -> None:
    """Options that only make sense for some models: --threshold for multi-label ones, --max-length within the
    position embeddings."""
    if config.threshold is not None and not model.multi_label:
        raise InputError(f"--threshold is the multi-label decision threshold, but {model.path} is a single-label "
                         "model (each row gets its most probable label). Leave --threshold out.")
    if config.max_length is not None and config.max_length > model.position_limit:
        raise InputError(f"--max-length {config.max_length} is above {model.path}'s position limit of "
                         f"{model.position_limit} tokens (config.json max_position_embeddings); use at most that.")


def check_lengths(tokenizer, max_length: int, config: ScoreConfig) -> None:
    """A segment of `max_length` tokens leaves room for text after the template's special tokens (a pair: one
    token of each text), and in window mode --stride is smaller than that room, so windows advance."""
    pair = config.text_pair_column is not None
    specials = tokenizer.num_special_tokens_to_add(pair)
    minimum = specials + (2 if pair else 1)
    if max_length < minimum:
        raise InputError(f"--max-length {max_length} leaves no room for text: the model's template adds {specials} "
                         f"special tokens{' to a pair' if pair else ''}, so the minimum is {minimum}.")
    room = max_length - specials
    if config.long_text == "window" and config.stride >= room:
        raise InputError(f"--stride {config.stride} must be smaller than the {room} text tokens of a window "
                         f"(--max-length {max_length} minus {specials} special tokens), or windows cannot advance.")


def check_consistency(model: ModelDir, tokenizer, runner) -> None:
    """Refuse at start a model whose parts disagree, rather than mislabel rows later."""
    rows = model.config.get("vocab_size")
    if rows and tokenizer.get_vocab_size() > rows:
        raise ModelError(
            f"{model.path}: the tokenizer has {tokenizer.get_vocab_size()} tokens but the embedding only "
            f"{rows} rows; ids past the table would be garbage. Use the tokenizer the model was trained with."
        )
    width = runner.num_labels
    if width is not None and width != len(model.labels):
        raise ModelError(
            f"{model.path}: config.json names {len(model.labels)} labels (id2label) but the graph outputs "
            f"{width} logits. Re-export the model, or fix id2label."
        )


def check_embeddings(model: ModelDir, runner) -> int:
    """The embedding's width for --embeddings: refuse, at start, a model family without a definition
    (embedding.py) and a graph exported before bertbatch added the embedding output."""
    width = embedding_size(model.config)
    have = getattr(runner, "embedding_size", None)
    if have is None and not runner.graph:
        raise ModelError(f"The runner {type(runner).__name__} cannot return embeddings (no embedding_size); "
                         "score without --embeddings.")
    if have is None:
        raise ModelError(f"{runner.graph} has no embedding output (exported before bertbatch added it); re-export "
                         f"with `bertbatch export {model.path}`, or score without --embeddings.")
    if have != width:
        raise ModelError(f"{runner.graph}: the embedding output has width {have} but config.json's hidden size "
                         f"is {width}. Re-export with `bertbatch export {model.path}`.")
    return width


def _row_means(values: np.ndarray, owner: np.ndarray, windows: np.ndarray, n: int) -> np.ndarray:
    """Per row, the mean of its segments' vectors (a row's own vector when it has one); NaN for rows without."""
    out = np.full((n, values.shape[1]), np.nan, dtype=np.float32)
    if not len(owner):
        return out
    if windows.max() == 1:
        out[owner] = values
        return out
    sums = np.zeros((n, values.shape[1]), dtype=np.float64)
    np.add.at(sums, owner, values)
    has = windows > 0
    out[has] = sums[has] / windows[has, None]
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-x))).astype(np.float32)


@cache
def blank_pattern() -> str:
    """A regex matching exactly the strings Python's str.strip() empties: only characters str.isspace() holds
    true for (all of them lie below U+3001; tests/test_score.py checks the whole code space)."""
    spaces = "".join(f"\\x{{{c:x}}}" for c in range(0x3001) if chr(c).isspace())
    return f"^[{spaces}]*$"


def result_columns(result: Result, labels: list[str], multi_label: bool, config: ScoreConfig) -> dict[str, pa.Array]:
    """The output columns that follow the kept input columns (see ARCHITECTURE.md, output schema).

    Built from numpy arrays by Arrow kernels (take, list offsets): no Python object per row."""
    ok = _scored(result)
    held = abstained(result, multi_label, config)
    labeled = ok & ~held  # abstained rows keep their score and probabilities, not a label
    probs = result.probs
    columns: dict[str, pa.Array] = {}
    names = pa.array(labels, pa.string())
    if multi_label:
        chosen = (probs >= config.decision_threshold) & labeled[:, None]
        _, label_index = np.nonzero(chosen)  # row by row, labels in their order
        columns["labels"] = _lists(chosen.sum(axis=1), names.take(label_index), labeled)
    else:
        best = np.where(ok, np.nan_to_num(probs, nan=-1).argmax(axis=1), 0)
        columns["label"] = names.take(pa.array(best, mask=~labeled))
        columns["score"] = pa.array(probs[np.arange(len(best)), best], pa.float32(), mask=~ok)
    if config.probs:
        for j, name in enumerate(labels):
            columns[f"prob_{name}"] = pa.array(probs[:, j], pa.float32(), mask=~ok)
    if config.top_k:
        k = min(config.top_k, len(labels))
        order = np.argsort(-np.nan_to_num(probs, nan=-1), axis=1)[:, :k][ok]
        top = pa.StructArray.from_arrays(
            [names.take(order.ravel()), pa.array(np.take_along_axis(probs[ok], order, axis=1).ravel(), pa.float32())],
            names=["label", "score"],
        )
        columns["top_k"] = _lists(np.where(ok, k, 0), top, ok)
    if config.logits:
        columns["logits"] = _lists(np.where(ok, len(labels), 0), pa.array(result.logits[ok].ravel(), pa.float32()), ok)
    if config.embeddings:
        vectors = np.where(ok[:, None], result.embeddings, 0).astype(np.float32)  # null rows still hold width zeros
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()),
                                                                 vectors.shape[1], mask=pa.array(~ok))
    columns["truncated"] = pa.array(result.truncated)
    if config.long_text == "window":
        columns["windows"] = pa.array(result.windows.astype(np.int32))
    errors = result.errors
    if held.any():
        errors = list(errors)
        for i in np.flatnonzero(held).tolist():
            errors[i] = _abstain_reason(probs[i], labels, multi_label, config.min_score)
    columns["error"] = pa.array(errors, pa.string())
    return columns


def _scored(result: Result) -> np.ndarray:
    """Rows that got probabilities (no null/empty/invalid text)."""
    n = len(result.errors)
    return np.equal(np.asarray(result.errors, dtype=object), None) if n else np.zeros(0, dtype=bool)


def confidence(probs: np.ndarray, multi_label: bool) -> np.ndarray:
    """What --min-score compares: the top label's probability; for multi-label the least sure label decision,
    min over labels of max(p, 1 - p) (a label whose probability lies between 1 - P and P is undecided)."""
    if not len(probs):
        return np.zeros(0, dtype=np.float32)
    safe = np.nan_to_num(probs, nan=1.0)
    return np.maximum(safe, 1 - safe).min(axis=1) if multi_label else safe.max(axis=1)


def abstained(result: Result, multi_label: bool, config: ScoreConfig) -> np.ndarray:
    """Scored rows whose confidence is below --min-score (compared in float32, as written)."""
    ok = _scored(result)
    if config.min_score is None:
        return np.zeros_like(ok)
    return ok & (confidence(result.probs, multi_label) < np.float32(config.min_score))


def _abstain_reason(p: np.ndarray, labels: list[str], multi_label: bool, min_score: float) -> str:
    if multi_label:
        j = int(np.argmin(np.maximum(p, 1 - p)))
        return f"label {labels[j]} probability {p[j]:.4g} is undecided at --min-score {min_score:g}"
    return f"score {p.max():.4g} below --min-score {min_score:g}"


def _lists(counts: np.ndarray, values: pa.Array, ok: np.ndarray) -> pa.ListArray:
    """A list column: row i holds the next counts[i] values; rows not ok are null (and hold none)."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~ok))
