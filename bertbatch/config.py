"""Frozen, self-validating settings for each stage. CLI options map one to one onto these fields."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InputError
from .tokenize import check_truncation

FREEZE_PATTERN = re.compile(r"^(none|embeddings|encoder|layers:\d+)$")


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
    class_weights: str = "none"  # none | auto
    freeze: str = "none"  # none | embeddings | layers:N | encoder
    early_stopping_patience: int = 2
    # Which tokens of a text longer than max_length train reads (head | tail | head+tail), recorded in the model
    # directory so every engine reads them alike; head_tokens None = a quarter of max_length (Sun et al.).
    truncation: str = "head"
    head_tokens: int | None = None
    precision: str = "auto"  # auto (bf16 autocast where the machine has bf16 units) | fp32 | bf16
    allow_pickle: bool = False
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self):
        if not FREEZE_PATTERN.match(self.freeze):
            raise InputError(f"--freeze must be none, embeddings, layers:N or encoder; got '{self.freeze}'.")
        if self.class_weights not in ("none", "auto"):
            raise InputError(f"--class-weights must be none or auto; got '{self.class_weights}'.")
        for name in ("validation_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise InputError(f"{name} must be between 0 and 0.5; got {getattr(self, name)}.")
        for name in ("epochs", "lr", "batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise InputError(f"{name} must be positive; got {getattr(self, name)}.")
        check_truncation(self.truncation, self.head_tokens)
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InputError(f"--precision must be auto, fp32 or bf16; got '{self.precision}'.")
        if self.labels is not None and len(set(self.labels)) < 2:
            raise InputError(f"--labels must name at least two distinct labels; got {list(self.labels)}.")


@dataclass(frozen=True)
class ExportConfig:
    # auto: fp32 at O1 and int8 quantized from O2, the fastest of each measured on CPU (O2's fused Attention is
    # ~8% slower in fp32 but its QAttention is the fastest int8); O1 | O2 | O3 | none apply to both.
    optimize: str = "auto"
    # int8: static (calibrated) int8, batch-invariant; None: no int8 graph.
    quantize: str | None = "int8"  # int8 | None
    # Also write today's dynamic int8 (model_int8_dynamic.onnx): its scales depend on the batch, so a row's label
    # can change with its batch-mates. Kept for comparison only; `score` never picks it unless asked (--graph).
    int8_dynamic: bool = False
    calibration_rows: int = 300  # validation texts that set the static int8 activation ranges
    # 7-bit weights: exact integer sums on x86 without VNNI too (see quantize.quantize_static)
    reduce_range: bool = True
    min_ood_agreement: float = 0.95  # int8 top-1 agreement with PyTorch on out-of-domain text
    quantize_preset: str = "auto"  # auto | avx512_vnni | avx2 | arm64 (dynamic int8 only)
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
        if self.optimize not in ("auto", "O1", "O2", "O3", "none"):
            raise InputError(f"--optimize must be auto, O1, O2, O3 or none; got '{self.optimize}'.")
        if self.quantize not in (None, "int8"):
            raise InputError(f"--quantize must be int8 or none; got '{self.quantize}'.")
        if self.quantize_preset not in ("auto", "avx512_vnni", "avx2", "arm64"):
            raise InputError(f"--quantize-preset must be auto, avx512_vnni, avx2 or arm64; got '{self.quantize_preset}'.")
        if self.calibration_rows < 1:
            raise InputError(f"--calibration-rows must be at least 1; got {self.calibration_rows}.")


@dataclass(frozen=True)
class ScoreConfig:
    text_column: str = "text"
    text_pair_column: str | None = None
    keep: tuple[str, ...] | None = None  # None = every input column
    provider: str = "auto"  # auto | cuda | cpu
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
    threshold: float = 0.5  # multi-label
    long_text: str = "truncate"  # truncate | window
    stride: int = 64
    aggregate: str = "mean"  # mean | max (window mode)
    output_format: str | None = None  # parquet | csv | jsonl; None = from the output suffix
    on_bad_rows: str = "error"  # error | reject
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
    tokenizer_backend: str = "auto"
    rejects: str | None = None  # rejected rows' file for file and stdout outputs (default: OUT.rejects.csv)
    # Which tokens of a text longer than max_length are read (head | tail | head+tail) and head+tail's head
    # share; None = what train recorded in the model directory (head for models trained before it recorded one).
    truncation: str | None = None
    head_tokens: int | None = None

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
        if self.provider not in ("auto", "cuda", "cpu"):
            raise InputError(f"--provider must be auto, cuda or cpu; got '{self.provider}'.")
        if self.long_text not in ("truncate", "window"):
            raise InputError(f"--long-text must be truncate or window; got '{self.long_text}'.")
        if self.aggregate not in ("mean", "max"):
            raise InputError(f"--aggregate must be mean or max; got '{self.aggregate}'.")
        if self.on_bad_rows not in ("error", "reject"):
            raise InputError(f"--on-bad-rows must be error or reject; got '{self.on_bad_rows}'.")
        if self.output_format not in (None, "parquet", "csv", "jsonl"):
            raise InputError(f"--format must be parquet, csv or jsonl; got '{self.output_format}'.")
        if (self.max_tokens or 1) < 1 or (self.max_batch_rows or 1) < 1 or self.window_rows < 1:
            raise InputError("--max-tokens, --max-batch-rows and --window-rows must be positive.")
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
        if self.truncation is not None or self.head_tokens is not None:
            check_truncation(self.truncation or "head", self.head_tokens)
