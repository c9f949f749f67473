"""Frozen, self-validating settings for each stage. CLI options map one to one onto these fields."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, get_args

from .errors import InputError

FREEZE_PATTERN = re.compile(r"^(none|embeddings|encoder|layers:\d+)$")
DEFAULT_THRESHOLD = 0.5  # multi-label decision threshold when --threshold is not given


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _between(name: str, value, low: float, high: float) -> None:
    """`value` a finite number in [low, high] (NaN and infinities refused too: they compare false)."""
    if not (_finite(value) and low <= value <= high):
        raise InputError(f"{name} must be a number between {low} and {high}; got {value}.")

# The allowed values of each choice, written once: the dataclasses below validate against them and the CLI's
# click.Choice lists them (get_args).
Provider = Literal["auto", "cuda", "cpu"]
LongText = Literal["truncate", "window"]
Aggregate = Literal["mean", "max"]
OnBadRows = Literal["error", "reject"]
OutputFormat = Literal["parquet", "csv", "jsonl"]
# auto: nanotoken where it agrees with the tokenizers library on a probe corpus; tokenizers: always that library
TokenizerBackend = Literal["auto", "tokenizers"]
Optimize = Literal["auto", "O1", "O2", "O3", "none"]
Quantize = Literal["int8"]  # or None: no int8 graph (the CLI's "none")
QuantizePreset = Literal["auto", "avx512_vnni", "avx2", "arm64"]
ClassWeights = Literal["none", "auto"]
Engine = Literal["local", "spark", "ray"]
# auto: the temperature bertbatch.json records (probabilities and score calibrated); none: raw softmax/sigmoid
Calibration = Literal["auto", "none"]
# which tokens of a text longer than max_length are read: the first, the last, or a head share and the rest
Truncation = Literal["head", "tail", "head+tail"]
Precision = Literal["auto", "fp32", "bf16"]  # train: auto = bf16 autocast where the machine has bf16 units


def choices(alias) -> tuple[str, ...]:
    """The values a Literal alias allows, in order."""
    return get_args(alias)


def check_choice(flag: str, value, alias, optional: bool = False) -> None:
    """InputError unless `value` is one of the alias's values (or None when `optional`)."""
    allowed = choices(alias)
    if value in allowed or (optional and value is None):
        return
    names = list(allowed) + (["none"] if optional else [])
    listed = ", ".join(names[:-1]) + f" or {names[-1]}"
    raise InputError(f"{flag} must be {listed}; got '{value}'.")


@dataclass(frozen=True)
class TrainConfig:
    text_column: str = "text"
    label_column: str = "label"
    base_model: str = "minilm-l6"
    multi_label: bool = False
    label_delimiter: str = ","
    labels: tuple[str, ...] | None = None  # fixed label set; unknown labels in the data are an error
    validation_data: str | None = None
    test_data: str | None = None
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 42
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 16
    max_length: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    class_weights: ClassWeights = "none"
    freeze: str = "none"  # none | embeddings | layers:N | encoder
    early_stopping_patience: int = 2
    # Which tokens of a text longer than max_length train reads (head | tail | head+tail), recorded in the model
    # directory so every engine reads them alike; head_tokens None = a quarter of max_length (Sun et al.).
    truncation: Truncation = "head"
    head_tokens: int | None = None
    precision: Precision = "auto"  # auto (bf16 autocast where the machine has bf16 units) | fp32 | bf16
    allow_pickle: bool = False
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self):
        if not FREEZE_PATTERN.match(self.freeze):
            raise InputError(f"--freeze must be none, embeddings, layers:N or encoder; got '{self.freeze}'.")
        check_choice("--class-weights", self.class_weights, ClassWeights)
        for name in ("validation_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise InputError(f"{name} must be between 0 and 0.5; got {getattr(self, name)}.")
        for name in ("epochs", "lr", "batch_size", "max_length"):
            if not (_finite(getattr(self, name)) and getattr(self, name) > 0):
                raise InputError(f"{name} must be positive; got {getattr(self, name)}.")
        _between("--warmup-ratio", self.warmup_ratio, 0, 1)
        if not (_finite(self.weight_decay) and self.weight_decay >= 0):
            raise InputError(f"--weight-decay must be zero or positive; got {self.weight_decay}.")
        if not self.label_delimiter:
            raise InputError("--label-delimiter must not be empty.")
        check_choice("--truncation", self.truncation, Truncation)
        check_choice("--precision", self.precision, Precision)
        if self.head_tokens is not None and self.head_tokens < 0:
            raise InputError(f"--head-tokens must be 0 or more; got {self.head_tokens}.")
        if self.labels is not None and len(set(self.labels)) < 2:
            raise InputError(f"--labels must name at least two distinct labels; got {list(self.labels)}.")


@dataclass(frozen=True)
class ExportConfig:
    # auto: fp32 at O1 and int8 quantized from O2, the fastest of each measured on CPU (O2's fused Attention is
    # ~8% slower in fp32 but its QAttention is the fastest int8); O1 | O2 | O3 | none apply to both.
    optimize: Optimize = "auto"
    # int8: static (calibrated) int8, batch-invariant; None: no int8 graph.
    quantize: Quantize | None = "int8"
    # Also write today's dynamic int8 (model_int8_dynamic.onnx): its scales depend on the batch, so a row's label
    # can change with its batch-mates. Kept for comparison only; `score` never picks it unless asked (--graph).
    int8_dynamic: bool = False
    calibration_rows: int = 300  # validation texts that set the static int8 activation ranges
    # 7-bit weights: exact integer sums on x86 without VNNI too (see quantize.quantize_static)
    reduce_range: bool = True
    min_ood_agreement: float = 0.95  # int8 top-1 agreement with PyTorch on out-of-domain text
    quantize_preset: QuantizePreset = "auto"  # dynamic int8 only
    fp16: bool = False
    validate: str | None = None  # labeled data for the parity gate; default: the test split recorded by train
    text_column: str = "text"
    label_column: str = "label"
    max_fp32_delta: float = 1e-4
    max_f1_drop: float = 0.01  # int8 may lose at most this much macro-F1 (absolute, 0.01 = 1 point)
    max_fp16_delta: float = 0.05
    min_unlabeled_agreement: float = 0.95  # int8 gate when the validation texts have no labels
    allow_pickle: bool = False
    opset: int | None = None
    # Compute the last encoder layer for token 0 only (the one the classification head reads): bertbatch/trim.py.
    trim_last_layer: bool = True

    def __post_init__(self):
        check_choice("--optimize", self.optimize, Optimize)
        check_choice("--quantize", self.quantize, Quantize, optional=True)
        check_choice("--quantize-preset", self.quantize_preset, QuantizePreset)
        if self.calibration_rows < 1:
            raise InputError(f"--calibration-rows must be at least 1; got {self.calibration_rows}.")
        for name in ("max_fp32_delta", "max_f1_drop", "max_fp16_delta"):
            if not (_finite(getattr(self, name)) and getattr(self, name) >= 0):
                raise InputError(f"{name} must be zero or positive; got {getattr(self, name)}.")
        for name in ("min_ood_agreement", "min_unlabeled_agreement"):
            _between(name, getattr(self, name), 0, 1)


@dataclass(frozen=True)
class ScoreConfig:
    text_column: str = "text"
    text_pair_column: str | None = None
    keep: tuple[str, ...] | None = None  # None = every input column
    provider: Provider = "auto"
    graph: str | None = None  # fp32 | int8 | fp16 | path to .onnx; None = best for the provider
    threads: int | None = None  # None = the CPUs this process may use
    # Padded-token budget and row cap of one batch; None = per provider (see batching.DEFAULT_BUDGET): small
    # batches keep CPU activations in cache, large ones fill a GPU.
    max_tokens: int | None = None
    max_batch_rows: int | None = None
    window_rows: int = 4096  # rows sorted together by length (streaming, so never the whole input)
    max_length: int | None = None  # None = the manifest's / tokenizer's
    probs: bool = False
    top_k: int | None = None
    logits: bool = False
    # "pooled": an `embedding` column, the vector the classification head reads (bertbatch/embedding.py);
    # "mean" (mean-pooled last hidden states) is refused: the graphs compute the last layer for token 0 only.
    embeddings: str | None = None
    threshold: float | None = None  # multi-label decision threshold; None = DEFAULT_THRESHOLD
    # auto: apply the temperature scaling recorded in bertbatch.json (probabilities and score are calibrated;
    # logits stay raw); none: the raw softmax/sigmoid
    calibration: Calibration = "auto"
    # rows whose score is below this get a null label and the reason in `error` (probabilities kept)
    min_score: float | None = None
    long_text: LongText = "truncate"
    stride: int = 64
    aggregate: Aggregate = "mean"  # window mode
    output_format: OutputFormat | None = None  # None = from the output suffix
    on_bad_rows: OnBadRows = "error"
    overwrite: bool = False
    resume: bool = False  # continue an interrupted directory job from its last committed part
    rows_per_part: int = 1_000_000
    allow_pickle: bool = False  # PyTorch backend on a pytorch_model.bin checkpoint
    # Where model directories given as store URIs are copied (once, hash-checked); None = ~/.cache/bertbatch/models.
    model_cache: str | None = None
    # Directory output in Hive `key=value` directories of these kept columns (readable by DuckDB, Spark, Polars).
    partition_by: tuple[str, ...] | None = None
    # Types of Hive partition keys read from input paths, "key:type" (pyarrow names); other keys are strings.
    partition_types: tuple[str, ...] | None = None
    # Who tokenizes single texts: "auto" = nanotoken where it loads the tokenizer and agrees with the
    # tokenizers library on a probe corpus (same ids, tens of times faster), else the tokenizers library;
    # "tokenizers" = always the tokenizers library.
    tokenizer_backend: TokenizerBackend = "auto"
    rejects: str | None = None  # rejected rows' file for file and stdout outputs (default: OUT.rejects.csv)
    # Which tokens of a text longer than max_length are read (head | tail | head+tail) and head+tail's head
    # share; None = what train recorded in the model directory (head for models trained before it recorded one).
    truncation: Truncation | None = None
    head_tokens: int | None = None

    @property
    def decision_threshold(self) -> float:
        """The multi-label decision threshold: --threshold, else 0.5."""
        return DEFAULT_THRESHOLD if self.threshold is None else self.threshold

    @property
    def partition_type_map(self) -> dict[str, str]:
        return dict(item.split(":", 1) for item in self.partition_types or ())

    @property
    def text_columns(self) -> list[str]:
        """The columns the model reads: the text, and the pair's second text when there is one."""
        return [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])

    def read_columns(self, keep: list[str]) -> list[str]:
        """Kept columns, then the text columns not already kept: what a reader must decode."""
        return list(dict.fromkeys(list(keep) + self.text_columns))

    def __post_init__(self):
        check_choice("--provider", self.provider, Provider)
        check_choice("--long-text", self.long_text, LongText)
        check_choice("--aggregate", self.aggregate, Aggregate)
        check_choice("--on-bad-rows", self.on_bad_rows, OnBadRows)
        check_choice("--format", self.output_format, OutputFormat, optional=True)
        check_choice("--tokenizer-backend", self.tokenizer_backend, TokenizerBackend)
        check_choice("--calibration", self.calibration, Calibration)
        if self.min_score is not None and not (_finite(self.min_score) and 0 <= self.min_score <= 1):
            raise InputError(f"--min-score must be between 0 and 1; got {self.min_score}.")
        if (self.max_tokens or 1) < 1 or (self.max_batch_rows or 1) < 1 or self.window_rows < 1:
            raise InputError("--max-tokens, --max-batch-rows and --window-rows must be positive.")
        if self.embeddings == "mean":
            raise InputError("--embeddings mean is not offered: bertbatch's graphs compute the last layer for the "
                             "first token only (trim.py), so the other tokens' last hidden states do not exist. "
                             "Use --embeddings (the vector the classification head reads).")
        if self.embeddings not in (None, "pooled"):
            raise InputError(f"--embeddings must be pooled (the default when given) or mean; got '{self.embeddings}'.")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"--top-k must be at least 1; got {self.top_k}.")
        if self.rows_per_part < 1:
            raise InputError(f"--rows-per-part must be positive; got {self.rows_per_part}.")
        if any(":" not in item for item in self.partition_types or ()):
            raise InputError(f"--partition-types takes key:type pairs such as dt:date32,year:int32; got {self.partition_types}.")
        if self.partition_by is not None and not self.partition_by:
            raise InputError("--partition-by needs at least one column name.")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be at least 1; got {self.threads}.")
        self._check_lengths()
        check_choice("--truncation", self.truncation, Truncation, optional=True)
        if self.head_tokens is not None and self.head_tokens < 0:
            raise InputError(f"--head-tokens must be 0 or more; got {self.head_tokens}.")
        if self.threshold is not None and not (_finite(self.threshold) and 0 < self.threshold < 1):
            raise InputError(f"--threshold must be a probability strictly between 0 and 1 (0 would choose every "
                             f"label, 1 none); got {self.threshold}.")
        for name, columns in (("--keep", self.keep), ("--partition-by", self.partition_by)):
            duplicates = sorted({c for c in columns or () if list(columns).count(c) > 1})
            if duplicates:
                raise InputError(f"{name} names {duplicates} more than once; list each column once.")

    def _check_lengths(self) -> None:
        """What can be checked without the model; the Scorer checks the rest against its template and
        position limit (score.check_lengths)."""
        if self.max_length is not None and (isinstance(self.max_length, bool) or self.max_length < 1):
            raise InputError(f"--max-length must be at least the model's special tokens + 1 (3 for BERT's "
                             f"[CLS] text [SEP]); got {self.max_length}. Leave it out for the model's maximum.")
        if isinstance(self.stride, bool) or self.stride < 0:
            raise InputError(f"--stride must be 0 or more tokens shared by consecutive windows; got {self.stride}.")


def _check_budget(threads: int | None, max_tokens: int | None = None) -> None:
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1; got {threads}.")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"--max-tokens must be positive; got {max_tokens}.")


@dataclass(frozen=True)
class EvalConfig:
    # fp32 | int8 | fp16 | torch | an .onnx path | default (the graph the scorer picks for the provider)
    graphs: tuple[str, ...] = ("default",)
    text_column: str = "text"
    label_column: str = "label"
    label_delimiter: str = ","  # multi-label cells
    threshold: float = 0.5  # multi-label decision threshold
    provider: Provider = "auto"
    threads: int | None = None
    max_tokens: int | None = None  # None = as `score`: this machine's tune record, else the provider's budget
    max_length: int | None = None
    truncation: Truncation | None = None  # None = what the model directory records (head for older models)
    head_tokens: int | None = None
    # the --min-score values of the risk-coverage table; None = evaluate.MIN_SCORES (0.5 to 0.99)
    min_scores: tuple[float, ...] | None = None

    def __post_init__(self):
        check_choice("--provider", self.provider, Provider)
        _check_budget(self.threads, self.max_tokens)
        for value in self.min_scores or ():
            if not (_finite(value) and 0 <= value <= 1):
                raise InputError(f"--min-scores must be numbers between 0 and 1; got {list(self.min_scores)}.")

    def score_options(self) -> dict:
        """The ScoreConfig fields each graph's Scorer takes."""
        return {"provider": self.provider, "threads": self.threads, "max_tokens": self.max_tokens,
                "max_length": self.max_length, "truncation": self.truncation, "head_tokens": self.head_tokens}


@dataclass(frozen=True)
class BenchConfig:
    graphs: tuple[str, ...] | None = None  # None = every ONNX graph present that suits the provider
    provider: Provider = "auto"
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    seq_lengths: tuple[int, ...] = (16, 64, 128, 256)  # synthetic mode only
    runs: int = 20  # timed batches per measurement
    warmup: int = 3  # untimed batches before timing
    data: str | None = None  # real texts (their length mix) instead of synthetic ones
    text_column: str = "text"
    threads: int | None = None

    def __post_init__(self):
        check_choice("--provider", self.provider, Provider)
        for name, values in (("--batch-sizes", self.batch_sizes), ("--seq-lengths", self.seq_lengths)):
            if not values or any(int(v) < 1 for v in values):
                raise InputError(f"{name} must be positive integers, e.g. 1,8,32; got {list(values or [])}.")
        if self.runs < 1 or self.warmup < 0:
            raise InputError(f"--runs must be at least 1 and --warmup at least 0; got runs={self.runs}, "
                             f"warmup={self.warmup}.")
        _check_budget(self.threads)


@dataclass(frozen=True)
class TuneConfig:
    provider: Provider = "auto"
    seconds: float = 60.0  # time budget for measuring
    rows: int = 512  # validation texts timed per measurement
    graphs: tuple[str, ...] | None = None  # None = every batch-invariant candidate for the provider

    def __post_init__(self):
        check_choice("--provider", self.provider, Provider)
        if self.seconds <= 0 or self.rows < 1:
            raise InputError(f"tune needs a positive time budget and row count; got {self.seconds}s, {self.rows} rows.")


@dataclass(frozen=True)
class SparkConfig:
    """How the Spark engine runs a job (the scoring options stay in ScoreConfig)."""

    master: str = "local[*]"  # used when no SparkSession is active
    # None: ship a zip of the model unless the master is local; False: executors read the same path
    ship_model: bool | None = None
    repartition: bool = True  # spread input with fewer partitions than `partitions` over that many
    partitions: int | None = None  # None = Spark's default parallelism
    spark_conf: dict | None = None  # settings of the session bertbatch starts

    def __post_init__(self):
        if self.partitions is not None and self.partitions < 1:
            raise InputError(f"--partitions must be at least 1; got {self.partitions}.")


def split_overrides(overrides: dict, cls) -> tuple[dict, dict]:
    """(the overrides that are fields of dataclass `cls`, the rest)."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    return ({k: v for k, v in overrides.items() if k in names}, {k: v for k, v in overrides.items() if k not in names})
