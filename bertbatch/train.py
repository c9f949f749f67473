"""Fine-tuning with transformers' Trainer: class weights, freezing, multi-label, early stopping, best checkpoint."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .assets import resolve_model
from .calibrate import calibration_measures, fit_record
from .temperature import recorded_temperature
from .checkpoint import load_classifier, load_tokenizer
from .config import TrainConfig
from .data import LabeledData, file_hashes, read_labeled, split
from .errors import InputError, ModelError, require
from .manifest import MANIFEST, replace_dir, sha256_file, versions, write_json_atomic
from .metrics import metrics_from_logits
from .runtime import available_cpus
from .tokenize import ascii_twin, default_head_tokens, tokenize, untruncated, wordpiece_twin

log = logging.getLogger(__name__)

TEST_SPLIT_FILE = "test_split.parquet"  # kept beside the checkpoint: export validates its graphs on it


def fine_tune(data: str | Path, output: str | Path, config: TrainConfig | None = None, progress=None,
              **overrides) -> dict:
    """Fine-tune `config.base_model` on a labeled table and write a checkpoint directory to `output`.

    Prints nothing: `progress(event, value)` hears `("steps", total)`, `("step", done)` and, after each
    epoch's evaluation, `("epoch", {"epoch", "train_loss", "eval_loss", <eval metrics>, "rows_per_s",
    "seconds_left"})`.

    Returns the manifest written to `output/bertbatch.json`. Nothing appears under `output` unless
    training succeeds: the checkpoint is built in a temporary sibling directory and renamed into place.
    """
    config = replace(config or TrainConfig(), **overrides)
    output = Path(output)
    _check_output(output, config.overwrite)
    started = time.time()

    train_set, val_set, test_set = _load_splits(data, config)
    torch = require("torch", "train")
    transformers = require("transformers", "train")
    transformers.set_seed(config.seed)

    tokenizer = load_tokenizer(config.base_model)
    model = load_classifier(
        config.base_model,
        allow_pickle=config.allow_pickle,
        num_labels=len(train_set.labels),
        id2label=dict(enumerate(train_set.labels)),
        label2id={name: i for i, name in enumerate(train_set.labels)},
        problem_type="multi_label_classification" if config.multi_label else "single_label_classification",
        ignore_mismatched_sizes=True,  # a checkpoint with another head size gets a fresh head
    )
    max_length = _max_length(config.max_length, tokenizer, model)
    frozen = freeze(model, config.freeze)
    threads = available_cpus()
    torch.set_num_threads(threads)  # torch counts the host's cores; this process may use fewer
    precision = training_precision(config.precision, torch)
    truncation = {"strategy": config.truncation,
                  "head_tokens": default_head_tokens(max_length) if config.head_tokens is None else config.head_tokens}

    reader = TextReader(tokenizer, max_length, truncation["strategy"], truncation["head_tokens"])
    encode = lambda d: _encode(reader, d)  # noqa: E731
    weights = _class_weights(train_set) if config.class_weights == "auto" else None
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bertbatch-train-", dir=output.parent) as workdir:
        val_rows = encode(val_set)  # tokenized once: every epoch's evaluation and the final pass read it
        trainer = _trainer(model, tokenizer, encode(train_set), val_rows, config, workdir, weights, torch,
                           progress, bf16=precision["autocast"] == "bf16")
        trainer.train()
        # group_by_length also reorders predict() batches (transformers 4.57), so score against the label_ids
        # returned with the predictions, never against test_set.targets in input order
        test = trainer.predict(encode(test_set))
        test_metrics = metrics_from_logits(test.predictions, test.label_ids, test_set.labels, config.multi_label)
        # one pass of the best model over validation gives both its metrics and the logits calibration fits on
        val = trainer.predict(val_rows, metric_key_prefix="eval")
        val_metrics = {**val.metrics, "epoch": trainer.state.epoch}
        calibration = _fit_calibration(val, test, train_set.labels, config, data)

        staging = Path(workdir) / "model"
        model = trainer.model
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.model_max_length = max_length
        tokenizer.save_pretrained(staging)
        _write_test_split(staging / TEST_SPLIT_FILE, test_set)
        manifest = {
            "name": output.name,
            "labels": train_set.labels,
            "problem_type": model.config.problem_type,
            "max_length": max_length,
            "truncation": truncation,  # how every engine cuts texts longer than max_length (score.resolve_truncation)
            "text_column": config.text_column,
            "train": {
                "base_model": config.base_model,
                "base_model_hash": _base_model_hash(config.base_model),
                "data": {"train": str(data), "hashes": file_hashes(data)},
                "rows": {"train": len(train_set), "validation": len(val_set), "test": len(test_set)},
                "config": asdict(config),
                "frozen_parameters": frozen,
                "threads": threads,
                "precision": precision,
                "best_validation": {k: v for k, v in val_metrics.items() if isinstance(v, (int, float))},
                "test_metrics": test_metrics,
                "seconds": round(time.time() - started, 1),
                "versions": versions("torch", "transformers"),
            },
            "weights_hash": sha256_file(staging / "model.safetensors"),
            "calibration": calibration,
        }
        write_json_atomic(staging / MANIFEST, manifest)
        replace_dir(staging, output)
    return manifest


def _fit_calibration(val, test, labels: list[str], config: TrainConfig, data) -> dict:
    """Temperature scaling fitted on the best model's validation logits, with its effect on the test split."""
    source = config.validation_data or f"the validation split of {data}"
    record = fit_record(val.predictions, val.label_ids, labels, config.multi_label, f"validation: {source}")
    temperature = recorded_temperature({"calibration": record}, labels, config.multi_label)
    record["test"] = {"rows": int(len(test.label_ids)),
                      "before": calibration_measures(test.predictions, test.label_ids, config.multi_label),
                      "after": calibration_measures(test.predictions, test.label_ids, config.multi_label, temperature)}
    return record


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise InputError(f"Output {output} already exists and is not empty. Pass --overwrite to replace it.")
    if output.exists() and not output.is_dir():
        raise InputError(f"Output {output} is a file; train writes a directory.")


def _load_splits(data, config: TrainConfig) -> tuple[LabeledData, LabeledData, LabeledData]:
    read = lambda path, labels: read_labeled(  # noqa: E731
        path,
        config.text_column,
        config.label_column,
        multi_label=config.multi_label,
        label_delimiter=config.label_delimiter,
        labels=labels,
    )
    full = read(data, list(config.labels) if config.labels else None)
    if config.validation_data and config.test_data:
        return full, read(config.validation_data, full.labels), read(config.test_data, full.labels)
    train, val, test = split(full, (config.validation_fraction, config.test_fraction), config.seed)
    if config.validation_data:  # the split's validation rows go back to training
        return full.subset(np.r_[train, val]), read(config.validation_data, full.labels), full.subset(test)
    if config.test_data:
        return full.subset(np.r_[train, test]), full.subset(val), read(config.test_data, full.labels)
    return full.subset(train), full.subset(val), full.subset(test)


def _max_length(requested: int, tokenizer, model) -> int:
    limits = [requested, getattr(model.config, "max_position_embeddings", requested)]
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)
    return int(min(limits))


def freeze(model, mode: str) -> int:
    """Freeze part of the encoder; returns how many parameters were frozen.

    embeddings: the embedding layer; layers:N: embeddings and the lowest N transformer layers;
    encoder: embeddings and every transformer layer (the pooler and classifier head still train).
    """
    if mode == "none":
        return 0
    base = model.base_model
    layers = list(base.encoder.layer)
    if mode == "embeddings":
        modules = [base.embeddings]
    elif mode == "encoder":
        modules = [base.embeddings, *layers]
    else:
        n = int(mode.split(":")[1])
        if n > len(layers):
            raise InputError(f"--freeze layers:{n} asks for more layers than the model has ({len(layers)}).")
        modules = [base.embeddings, *layers[:n]]
    count = 0
    for module in modules:
        for param in module.parameters():
            param.requires_grad = False
            count += param.numel()
    return count


class TextReader:
    """Texts -> token ids exactly as `score` reads them: the saved tokenizer.json's tokenizer truncating at
    max_length, bertbatch.tokenize's cut (strategy, head tokens) and its backends (nanotoken, ascii twin)."""

    def __init__(self, tokenizer, max_length: int, truncation: str, head_tokens: int):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ModelError("train needs a fast tokenizer (tokenizer.json): score reads texts with it.")
        self.tokenizer = type(backend).from_str(backend.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.max_length, self.truncation, self.head_tokens = max_length, truncation, head_tokens
        self.types = any(self.tokenizer.encode("a").type_ids)  # as Scorer: types only where the template sets them
        self.ascii = ascii_twin(self.tokenizer)
        self.wordpiece = wordpiece_twin(self.tokenizer)
        self.full = untruncated(self.tokenizer) if truncation != "head" else None

    def __call__(self, texts: list[str]):
        return tokenize(self.tokenizer, texts, self.max_length, False, self.types, ascii_tokenizer=self.ascii,
                        wordpiece=self.wordpiece, truncation=self.truncation, head_tokens=self.head_tokens,
                        full_tokenizer=self.full)


def _encode(reader: TextReader, data: LabeledData) -> list[dict]:
    """One dict per row (input_ids, attention_mask, token_type_ids where typed, labels), tokenized once."""
    tokens = reader(data.texts)
    offsets = tokens.offsets.tolist()
    ids = tokens.ids.tolist()
    types = tokens.types.tolist() if tokens.types is not None else None
    rows = []
    for i, target in enumerate(data.targets):
        a, b = offsets[i], offsets[i + 1]
        row = {"input_ids": ids[a:b], "attention_mask": [1] * (b - a)}
        if types is not None:
            row["token_type_ids"] = types[a:b]
        row["labels"] = target.tolist() if data.multi_label else int(target)
        rows.append(row)
    return rows


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of CPU bf16 matrix / dot-product units


def bf16_autocast(choice: str, cpu_flags: set[str], cuda_bf16: bool) -> bool:
    """Whether training runs under bf16 autocast: asked for (bf16), refused (fp32), or on `auto` where the
    device has bf16 units: a CUDA GPU that supports it, else a CPU with AMX-BF16 or AVX512-BF16 (without them
    torch emulates bf16, slower than fp32)."""
    if choice != "auto":
        return choice == "bf16"
    return cuda_bf16 or any(flag in cpu_flags for flag in BF16_CPU_FLAGS)


def training_precision(choice: str, torch) -> dict:
    """The autocast train uses and why, recorded with the CPU model and its bf16 flags."""
    from .bench import cpu_model
    from .machine import cpu_flags

    flags = cpu_flags()
    cuda = torch.cuda.is_available()
    cuda_bf16 = cuda and torch.cuda.is_bf16_supported()
    return {"autocast": "bf16" if bf16_autocast(choice, flags, cuda_bf16) else "fp32", "choice": choice,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu", "cpu": cpu_model(),
            "cpu_bf16_flags": [f for f in BF16_CPU_FLAGS if f in flags]}


def _class_weights(data: LabeledData) -> np.ndarray:
    """Inverse-frequency weights (n / (k * count)) for classes; neg/pos ratios for multi-label positives."""
    if data.multi_label:
        pos = data.targets.sum(0)
        return ((len(data) - pos) / np.maximum(pos, 1)).astype(np.float32)
    counts = np.bincount(data.targets, minlength=len(data.labels)).astype(np.float64)
    return (len(data) / (len(data.labels) * np.maximum(counts, 1))).astype(np.float32)


def _trainer(model, tokenizer, train_rows, val_rows, config: TrainConfig, workdir, weights, torch, progress=None,
             bf16: bool = False):
    import transformers

    multi = config.multi_label

    class WeightedTrainer(transformers.Trainer):
        """Trainer whose loss applies class weights (CE) or positive weights (BCE)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            w = torch.as_tensor(weights, device=outputs.logits.device)
            if multi:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    outputs.logits, labels.float(), pos_weight=w
                )
            else:
                loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=w)
            return (loss, outputs) if return_outputs else loss

    def compute_metrics(eval_pred):
        m = metrics_from_logits(eval_pred.predictions, eval_pred.label_ids, list(model.config.id2label.values()), multi)
        return {k: v for k, v in m.items() if isinstance(v, float)}

    args = transformers.TrainingArguments(
        output_dir=workdir,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(config.batch_size, 32),
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_only_model=True,  # checkpoints hold weights only (safetensors), no pickled optimizer state
        save_total_limit=2,
        load_best_model_at_end=True,
        # validation loss picks the best epoch: on small validation sets F1 ties often and would keep an early,
        # barely-trained epoch
        metric_for_best_model="loss",
        greater_is_better=False,
        group_by_length=True,  # length-sorted mega-batches: DataCollatorWithPadding pads each to its longest row
        bf16=bf16,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[],
        logging_strategy="epoch",
        disable_tqdm=True,  # the caller's progress callback reports steps and epochs (one bar, one table)
        log_level="error" if config.quiet else "warning",
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    callbacks = [transformers.EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)]
    cls = WeightedTrainer if weights is not None else transformers.Trainer
    trainer = cls(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=val_rows,
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    # Trainer's own console output (raw log dicts, nested tqdm bars) is replaced by `progress`
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    trainer.remove_callback(transformers.trainer_callback.ProgressCallback)
    if progress is not None:
        trainer.add_callback(_progress_callback(progress, len(train_rows)))
    return trainer


def _progress_callback(progress, train_rows: int):
    """A TrainerCallback that turns Trainer's events into `progress(event, value)` calls."""
    import transformers

    class Report(transformers.TrainerCallback):
        train_loss = None
        training = False
        started = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.training = True
            self.started = time.perf_counter()
            progress("steps", state.max_steps)

        def on_train_end(self, args, state, control, **kwargs):
            self.training = False

        def on_step_end(self, args, state, control, **kwargs):
            progress("step", state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.train_loss = logs["loss"]

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if self.training and metrics:  # the per-epoch evaluation, not the final ones
                row = {"epoch": round(state.epoch or 0), "train_loss": self.train_loss}
                row.update({k.removeprefix("eval_"): v for k, v in metrics.items()
                            if isinstance(v, float) and k != "epoch" and not k.endswith(("_runtime", "_per_second"))})
                row.update(_pace(time.perf_counter() - self.started, state.global_step, state.max_steps,
                                 train_rows * (state.epoch or 0)))
                progress("epoch", row)

    return Report()


def _pace(elapsed: float, steps_done: int, steps_total: int, rows_done: float) -> dict:
    """Training rows per second so far (evaluation included) and the seconds the remaining steps should take."""
    if elapsed <= 0 or steps_done <= 0:
        return {"rows_per_s": None, "seconds_left": None}
    return {"rows_per_s": round(rows_done / elapsed, 1),
            "seconds_left": round(elapsed / steps_done * max(steps_total - steps_done, 0), 1)}


def _write_test_split(path: Path, data: LabeledData) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if data.multi_label:
        labels = [[data.labels[j] for j in np.flatnonzero(row)] for row in data.targets]
    else:
        labels = [data.labels[i] for i in data.targets]
    pq.write_table(pa.table({"text": data.texts, "label": labels}), path)


def _base_model_hash(name: str) -> str:
    path = Path(resolve_model(name))
    weights = path / "model.safetensors"
    return sha256_file(weights) if weights.exists() else f"hub:{name}"
