"""The `bertbatch` command: parse options into a config, make one library call, print a summary.

The only module that imports click. Every failure becomes a one-line message and a documented exit code
(errors.py; README, "Exit codes").
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys

import click

from . import __version__
from .config import (Aggregate, Calibration, ClassWeights, Engine, LongText, OnBadRows, Optimize, OutputFormat,
                     Precision, Provider, Quantize, QuantizePreset, TokenizerBackend, Truncation, choices)
from .errors import BertbatchError


def _friendly(fn):
    """Turn every failure into a one-line `Error: ...` and its documented exit code (errors.py), never a traceback.

    Library errors carry their own code; OS errors (permissions, full disk, a file where a directory should
    be) are described with their path; anything else is a bug: one line, exit 70, the traceback with -v."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import EXIT_BROKEN_PIPE, EXIT_BUG, EXIT_INTERRUPTED, EXIT_OUTPUT, describe_os_error

        try:
            return fn(*args, **kwargs)
        except BertbatchError as exc:
            _fail(str(exc), exc.exit_code)
        except BrokenPipeError:  # `-o - | head`: the reader left; stop quietly, as `cat` would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_BROKEN_PIPE)
        except OSError as exc:
            _fail(f"Cannot complete the command: {describe_os_error(exc)}", EXIT_OUTPUT)
        except KeyboardInterrupt:
            _fail("Interrupted. A directory job can continue with --resume.", EXIT_INTERRUPTED)
        except click.exceptions.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence: a message, not a traceback
            if logging.getLogger().isEnabledFor(logging.DEBUG) or logging.getLogger().isEnabledFor(logging.INFO):
                import traceback

                traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _fail(f"Internal error {type(exc).__name__}: {first}. This is a bug in bertbatch; run again with -v "
                  "for the traceback and report it.", EXIT_BUG)

    return wrapper


def _fail(message: str, code: int):
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _key_values(pairs) -> dict:
    """('k=v', ...) -> {k: v}; a pair without '=' is a usage error."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got '{pair}'.", param_hint="--spark-conf")
        out[key.strip()] = value
    return out


def _csv_list(value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


# ------------------------------------------------------------------------------------ options several commands take
def _choice(alias) -> click.Choice:
    """A click.Choice over a config Literal's values: the allowed values are written once, in config.py."""
    return click.Choice(choices(alias))


provider_option = click.option(
    "--provider", type=_choice(Provider), default="auto", show_default=True,
    help="auto: CUDA when onnxruntime offers it, else CPU.")
text_column_option = click.option("--text-column", default="text", show_default=True, help="Column holding the text.")
label_column_option = click.option("--label-column", default="label", show_default=True, help="Column holding the label(s).")
max_tokens_option = click.option(
    "--max-tokens", type=int, help="Padded-token budget of one batch (default: this machine's tune record, else the "
    "provider's: 1024 on CPU, 32768 on CUDA).")
max_length_option = click.option("--max-length", type=int, help="Token limit per text (default: the model's).")


def truncation_options(fn):
    """--truncation and --head-tokens of the commands that read a trained model (score, eval)."""
    fn = click.option("--head-tokens", type=int,
                      help="head+tail: text tokens kept from the start (default: the model's).")(fn)
    return click.option("--truncation", type=_choice(Truncation),
                        help="Which tokens of a longer text are read (default: the strategy the model was "
                             "trained with).")(fn)


def threads_option(default_help: str = "CPUs this process may use"):
    return click.option("--threads", type=int, help=f"Intra-op threads (default: {default_help}).")


def graphs_option(help: str, **kwargs):
    """--graph (also spelled --graphs): comma-separated graph names for commands that take several."""
    return click.option("--graph", "--graphs", "graphs", help=help, **kwargs)


def quiet_option(fn):
    """-q/--quiet on a command, as `bertbatch -q` before it; `--silent` is the old spelling (score), kept hidden."""
    fn = click.option("--silent", "silent", is_flag=True, hidden=True, help="Old spelling of --quiet.")(fn)
    return click.option("-q", "--quiet", is_flag=True, help="Only errors: no progress bars, tables or summaries "
                        "(as bertbatch -q).")(fn)


def _quiet(ctx, quiet: bool, silent: bool = False) -> bool:
    """This command's -q/--quiet/--silent, or the group's -q."""
    return quiet or silent or bool((ctx.obj or {}).get("quiet"))


@click.group()
@click.version_option(__version__, prog_name="bertbatch")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors: no progress bars, tables or summaries.")
@click.pass_context
def cli(ctx, verbose, quiet):
    """Fine-tune, export and batch-score BERT-family text classifiers."""
    ctx.obj = {"quiet": quiet}
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@cli.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--output", "-o", required=True, type=click.Path(), help="Checkpoint directory to write.")
@text_column_option
@label_column_option
@click.option("--base-model", default="minilm-l6", show_default=True, help="Alias, local path or hub id.")
@click.option("--multi-label", is_flag=True, help="Labels column holds lists or delimited strings.")
@click.option("--label-delimiter", default=",", show_default=True, help="Separator of labels in one cell.")
@click.option("--labels", help="Fixed label set, comma-separated; other labels in the data are an error.")
@click.option("--validation-data", type=click.Path(exists=True), help="Explicit validation table.")
@click.option("--test-data", type=click.Path(exists=True), help="Explicit test table.")
@click.option("--validation-fraction", default=0.1, show_default=True)
@click.option("--test-fraction", default=0.1, show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option("--epochs", default=3.0, show_default=True)
@click.option("--lr", default=5e-5, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--max-length", default=128, show_default=True)
@click.option("--truncation", type=_choice(Truncation), default="head", show_default=True,
              help="Which tokens of a longer text train reads; recorded in the model, used by every engine.")
@click.option("--head-tokens", type=int, help="head+tail: text tokens kept from the start (default: max length / 4).")
@click.option("--precision", type=_choice(Precision), default="auto", show_default=True,
              help="auto: bf16 autocast on CUDA with bf16 and CPUs with AMX-BF16/AVX512-BF16, else fp32.")
@click.option("--warmup-ratio", default=0.1, show_default=True)
@click.option("--weight-decay", default=0.01, show_default=True)
@click.option("--class-weights", type=_choice(ClassWeights), default="none", show_default=True)
@click.option("--freeze", default="none", show_default=True, help="none | embeddings | layers:N | encoder")
@click.option("--early-stopping-patience", default=2, show_default=True)
@click.option("--allow-pickle", is_flag=True, help="Allow loading pytorch_model.bin (pickle) base models.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@quiet_option
@click.pass_context
@_friendly
def train(ctx, data, output, labels, silent, **options):
    """Fine-tune a classifier on a labeled CSV/Parquet table."""
    from .config import TrainConfig
    from .train import fine_tune

    options["quiet"] = quiet = _quiet(ctx, options["quiet"], silent)
    report = None if quiet else _TrainReport()
    try:
        with _quiet_transformers(quiet):
            manifest = fine_tune(data, output, TrainConfig(labels=_csv_list(labels), **options), progress=report)
    finally:
        if report:
            report.close()
    metrics = manifest["train"]["test_metrics"]
    headline = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    if not quiet:
        click.echo(f"Wrote {output} (labels {manifest['labels']}); test {json.dumps(headline)}")


@contextlib.contextmanager
def _quiet_transformers(quiet: bool):
    """-q: transformers' own warnings (a new classification head, ...) are not errors; silenced meanwhile."""
    if not quiet:
        yield
        return
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


class _TrainReport:
    """One progress bar for the training steps (on a terminal) and one table row per epoch, on stderr."""

    COLUMNS = ("epoch", "train_loss", "loss", "accuracy", "subset_accuracy", "macro_f1", "rows_per_s", "seconds_left")

    def __init__(self):
        self.total = None
        self.tty = sys.stderr.isatty()
        self.header = False

    def __call__(self, event: str, value):
        if event == "steps":
            self.total = value
        elif event == "step" and self.tty and self.total:
            width = 30
            done = int(width * value / self.total)
            sys.stderr.write(f"\rtraining [{'#' * done}{'.' * (width - done)}] {value}/{self.total} steps")
            sys.stderr.flush()
        elif event == "epoch":
            self._row(value)

    def _row(self, row: dict):
        columns = [c for c in self.COLUMNS if c in row]
        if self.tty:
            sys.stderr.write("\r\033[K")
        if not self.header:
            self.columns = columns
            click.echo("  ".join(f"{('val_' + c) if c in ('loss', 'accuracy', 'macro_f1') else c:>12}"
                                 for c in columns), err=True)
            self.header = True
        cells = [row.get(c) for c in self.columns]
        click.echo("  ".join(f"{v:>12.4f}" if isinstance(v, float) else f"{v!s:>12}" for v in cells), err=True)

    def close(self):
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


@cli.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--optimize", type=_choice(Optimize), default="auto", show_default=True,
              help="auto: fp32 at O1, int8 from O2 (fastest of each on CPU); a level applies to both.")
@click.option("--quantize", type=click.Choice(choices(Quantize) + ("none",)), default="int8", show_default=True,
              help="Static int8 graph for CPU: activation scales calibrated on validation texts, so a row's result "
                   "never depends on its batch (batch-invariant, checked by the export gate).")
@click.option("--int8-dynamic", is_flag=True, help="Also write model_int8_dynamic.onnx (dynamic int8, scales per "
              "batch): batch-dependent, for comparison only; never a default.")
@click.option("--calibration-rows", default=300, show_default=True, help="Validation texts that calibrate static int8.")
@click.option("--reduce-range/--full-range", default=True, show_default=True,
              help="7-bit int8 weights: exact integer sums on x86 CPUs without VNNI as well.")
@click.option("--min-ood-agreement", default=0.95, show_default=True,
              help="int8 top-1 agreement with PyTorch needed on out-of-domain text (movie-review sentences).")
@click.option("--quantize-preset", type=_choice(QuantizePreset), default="auto",
              show_default=True, help="Dynamic int8 only: auto reads this CPU's features.")
@click.option("--fp16", is_flag=True, help="Also write an fp16 graph for GPU.")
@click.option("--validate", type=click.Path(exists=True), help="Labeled data for the parity gate "
              "(default: the test split recorded by train, else a built-in sample).")
@text_column_option
@label_column_option
@click.option("--max-fp32-delta", default=1e-4, show_default=True, help="fp32 max |logit - PyTorch|.")
@click.option("--max-f1-drop", default=0.01, show_default=True, help="int8 macro-F1 loss allowed (0.01 = 1 point).")
@click.option("--max-fp16-delta", default=0.05, show_default=True)
@click.option("--min-unlabeled-agreement", default=0.95, show_default=True)
@click.option("--opset", type=int, help="ONNX opset (default: optimum's).")
@click.option("--allow-pickle", is_flag=True, help="Allow a pytorch_model.bin checkpoint.")
@click.option("--trim-last-layer/--full-last-layer", default=True, show_default=True,
              help="Compute the last layer for the first token only, the one the classifier reads (BERT, "
                   "RoBERTa, XLM-R, CamemBERT, ELECTRA; same logits, ~1/6 fewer FLOPs for a 6-layer model).")
@click.option("--tune/--no-tune", "run_tune", default=True, show_default=True,
              help="Afterwards, a brief `bertbatch tune` on this machine (see --tune-seconds).")
@click.option("--tune-seconds", default=20.0, show_default=True, help="Time budget of that tune.")
@_friendly
def export(model_dir, quantize, run_tune, tune_seconds, **options):
    """Write MODEL_DIR/onnx/: optimized fp32, static int8 (and fp16) graphs, each checked against PyTorch,
    on out-of-domain text, and (CPU graphs) for batch invariance; then a brief tune on this machine."""
    from .config import ExportConfig
    from .errors import ValidationFailed
    from .export import export_onnx, graph_line

    try:
        section = export_onnx(model_dir, ExportConfig(quantize=None if quantize == "none" else quantize, **options))
    except ValidationFailed as exc:
        click.echo(json.dumps(exc.figures, indent=2), err=True)
        raise
    for graph in section["graphs"].values():
        click.echo(graph_line(graph))
    if run_tune:
        from .config import TuneConfig
        from .tune import record_line, tune

        click.echo(record_line(tune(model_dir, TuneConfig(seconds=tune_seconds, rows=128))))


@cli.command("tune")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@provider_option
@click.option("--seconds", default=60.0, show_default=True, help="Time budget for measuring.")
@click.option("--rows", default=512, show_default=True, help="Validation texts timed per measurement.")
@graphs_option("Comma-separated candidates (default: every batch-invariant graph for the provider: fp32, int8; "
               "bf16 on CPUs with AMX/AVX512-BF16; fp16 on CUDA).")
@quiet_option
@click.pass_context
@_friendly
def tune_(ctx, model_dir, graphs, quiet, silent, **options):
    """Time MODEL_DIR's graphs x batch budgets x threads on this machine; record the fastest that passes the
    gates in bertbatch.json under this machine's signature (CPU, ISA flags, CPUs, provider, onnxruntime).
    `score` uses the record on a machine with the same signature, else safe defaults."""
    from .config import TuneConfig
    from .tune import record_line, tune

    progress = None if _quiet(ctx, quiet, silent) else (lambda line: click.echo(line, err=True))
    record = tune(model_dir, TuneConfig(graphs=_csv_list(graphs), **options), progress=progress)
    click.echo(record_line(record))


class _Progress:
    """rows/s and ETA on a terminal (stderr); silent when not a terminal or with -q."""

    def __init__(self, enabled: bool):
        import time

        self.enabled = enabled and sys.stderr.isatty()
        self.clock = time.monotonic
        self.start = self.clock()

    def __call__(self, done: int, total: int | None):
        if not self.enabled:
            return
        rate = done / max(self.clock() - self.start, 1e-9)
        eta = f", ETA {int((total - done) / rate)}s" if total and rate else ""
        pct = f" {100 * done / total:5.1f}%" if total else ""
        sys.stderr.write(f"\r{done:,} rows{pct}, {rate:,.0f} rows/s{eta}   ")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


def _summary_line(s: dict) -> str:
    return (
        f"{s['rows_in']:,} rows in, {s['rows_written']:,} written ({s['rows_with_error']:,} with error), "
        f"{s['rows_rejected']:,} rejected"
        + (f", {s['rows_abstained']:,} abstained (below --min-score)" if s.get("rows_abstained") else "")
        + f"; {s['rows_per_s']:,} rows/s, {s['tokens_per_s']:,} tokens/s, "
        f"padding efficiency {s['padding_ratio']}; {s['provider']} ({s['graph']}, {s['threads']} threads) -> {s['output']}"
    ) + (f"; rejected rows -> {s['rejects']}" if s.get("rejects") else "") + (
        f"\nsettings: {s['settings']}" if s.get("settings") else "")


def _model_dir_or_uri(ctx, param, value):
    """click callback: a store URI as given (its cache copy is made by the library), else an existing directory."""
    from .storage import is_uri, local_file_path

    if is_uri(value):
        return value
    try:
        value = local_file_path(value)  # file:///models/x is the directory /models/x
    except BertbatchError as exc:
        raise click.BadParameter(str(exc)) from None
    return click.Path(exists=True, file_okay=False).convert(value, param, ctx)


@cli.command()
@click.argument("model_dir", callback=_model_dir_or_uri)
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True,
              help="Output file (.parquet, .csv, .tsv, .csv.gz, .jsonl; another suffix needs --format), directory "
                   "(no suffix), or - for stdout; a path, file:// or a store URI (s3://...).")
@click.option("--partition-by", help="Comma-separated kept columns: directory output in Hive key=value directories.")
@click.option("--partition-types", help="Types of input partition keys, e.g. dt:date32,year:int32 (default: strings).")
@click.option("--model-cache", type=click.Path(file_okay=False),
              help="Where a MODEL_DIR given as a store URI is copied once (default: ~/.cache/bertbatch/models).")
@text_column_option
@click.option("--text-pair-column", help="Second text of a sentence pair.")
@click.option("--keep", help="Comma-separated input columns to pass through (default: all).")
@provider_option
@click.option("--graph", help="fp32 | int8 | fp16 | int8-dynamic | torch | path to an .onnx file. Default: this "
              "machine's `bertbatch tune` record, else int8 on CPU (static, batch-invariant), fp16 on CUDA. "
              "int8-dynamic is batch-dependent (a row's label can change with its batch-mates): never a default.")
@threads_option("this machine's tune record, else the CPUs this process may use")
@max_tokens_option
@click.option("--max-batch-rows", type=int, help="Row cap of one batch (default: tune record, else 32 on CPU, 512 on CUDA).")
@click.option("--window-rows", default=4096, show_default=True, help="Rows sorted by length together.")
@max_length_option
@click.option("--probs", is_flag=True, help="One prob_<label> column per class.")
@click.option("--top-k", type=int, help="A top_k column with the K best labels.")
@click.option("--logits", is_flag=True, help="A logits column.")
@click.option("--embeddings", type=click.Choice(["pooled", "mean"]), is_flag=False, flag_value="pooled",
              help="An embedding column (FLOAT[hidden]): the vector the classification head reads, from the same "
                   "pass. mean is refused (the graphs compute the last layer for the first token only).")
@click.option("--threshold", type=float, help="Multi-label decision threshold, between 0 and 1 (default 0.5; "
              "refused for a single-label model).")
@click.option("--calibration", type=_choice(Calibration), default="auto", show_default=True,
              help="auto: probabilities and score use the temperature recorded in bertbatch.json; none: raw softmax.")
@click.option("--min-score", type=float, help="Rows whose score is below this get a null label and the reason in "
              "error (probabilities kept): route them to review. Pick it from `eval`'s risk-coverage table.")
@click.option("--long-text", type=_choice(LongText), default="truncate", show_default=True)
@click.option("--stride", default=64, show_default=True, help="Tokens shared by consecutive windows.")
@truncation_options
@click.option("--aggregate", type=_choice(Aggregate), default="mean", show_default=True)
@click.option("--tokenizer-backend", type=_choice(TokenizerBackend), default="auto", show_default=True,
              help="auto: nanotoken for single texts where it loads the tokenizer and gives the same ids as the "
                   "tokenizers library on a probe corpus (tens of times faster); tokenizers: always that library.")
@click.option("--format", "output_format", type=_choice(OutputFormat), help="Default: from the suffix.")
@click.option("--on-bad-rows", type=_choice(OnBadRows), default="error", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--resume", is_flag=True, help="Continue an interrupted directory job from its last committed part.")
@click.option("--allow-pickle", is_flag=True, help="Allow a pytorch_model.bin checkpoint (PyTorch backend).")
@click.option("--rejects", type=click.Path(dir_okay=False),
              help="With --on-bad-rows reject: the rejected rows' CSV (default OUT.rejects.csv; needed with -o -).")
@click.option("--rows-per-part", default=1_000_000, show_default=True, help="Directory output: rows per part file.")
@click.option("--engine", type=_choice(Engine), default="local", show_default=True,
              help="spark: run the same scorer inside Apache Spark (needs the 'spark' extra); ray: on a Ray cluster "
                   "(needs the 'ray' extra).")
@click.option("--address", help="Ray cluster HOST:PORT (with --engine ray; default $RAY_ADDRESS, else a local Ray).")
@click.option("--master", default="local[*]", show_default=True, help="Spark master URL (with --engine spark).")
@click.option("--ship-model/--no-ship-model", default=None,
              help="Spark: zip the model and ship it to executors (default: unless the master is local); Ray: "
                   "through the object store (default); --no-ship-model: workers read MODEL_DIR at the same path.")
@click.option("--repartition/--no-repartition", default=True, show_default=True,
              help="Spark: spread input with fewer partitions than --partitions over that many.")
@click.option("--partitions", type=int, help="Spark: partitions to spread input over (default: default parallelism).")
@click.option("--spark-conf", "spark_conf", multiple=True, metavar="KEY=VALUE",
              help="Spark setting for the session bertbatch starts (repeatable), e.g. "
                   "spark.pyspark.python=/opt/venv/bin/python, spark.executor.pyspark.memory=1g.")
@quiet_option
@click.pass_context
@_friendly
def score(ctx, model_dir, inputs, output, keep, quiet, silent, engine, address, master, ship_model, repartition,
          partitions, spark_conf, partition_by, partition_types, **options):
    """Label CSV/Parquet rows with MODEL_DIR's ONNX graph; one output row per input row, in order.

    MODEL_DIR, INPUTS and -o take local paths or store URIs (s3://, gs://, abfs://, hdfs://, fsspec schemes)."""
    from .config import ScoreConfig, SparkConfig
    from .pipeline import score_file

    silent = _quiet(ctx, quiet, silent)
    options["partition_by"] = _csv_list(partition_by)
    options["partition_types"] = _csv_list(partition_types)
    if engine == "spark":
        if options["partition_by"]:
            raise click.UsageError("--partition-by is available with --engine local only.")
        from .spark import score_files

        engine_config = SparkConfig(master=master, ship_model=ship_model, repartition=repartition,
                                    partitions=partitions, spark_conf=_key_values(spark_conf))
        summary = score_files(list(inputs), output, model_dir, ScoreConfig(keep=_csv_list(keep), **options),
                              engine_config)
        if not silent:
            click.echo(json.dumps(summary))
        return
    if engine == "ray":
        from .ray import score_files as score_on_ray

        summary = score_on_ray(list(inputs), output, model_dir, ScoreConfig(keep=_csv_list(keep), **options),
                               address=address, ship_model=ship_model)
        if not silent:
            click.echo(json.dumps(summary))
        return
    progress = _Progress(not silent and output != "-")
    try:
        summary = score_file(list(inputs), output, model_dir, ScoreConfig(keep=_csv_list(keep), **options), progress=progress)
    finally:
        progress.close()
    if not silent:
        click.echo(_summary_line(summary), err=output == "-")


@cli.command()
@click.option("--workdir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Where models/ and data/ and out/ are created.")
@_friendly
def demo(workdir):
    """Fine-tune MiniLM on SMS Spam (once), export it, and score a table: the whole job offline."""
    from .demo import run_demo

    for line in run_demo(workdir):
        click.echo(line)


def _int_list(ctx, param, value):
    """click callback: '1,8,32' -> (1, 8, 32)."""
    try:
        return tuple(int(v) for v in _csv_list(value) or ())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 1,8,32; got '{value}'.") from None


def _float_list(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _csv_list(value))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 0.8,0.9; got '{value}'.") from None


@cli.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True))
@text_column_option
@label_column_option
@click.option("--label-delimiter", default=",", show_default=True, help="Separator of labels in one cell (multi-label).")
@provider_option
@click.option("--graph", help="The graph whose logits are fitted (default: the one `score` runs).")
@truncation_options
@_friendly
def calibrate(model_dir, data, **options):
    """Fit temperature scaling for MODEL_DIR on labeled DATA (a new domain) and record it in bertbatch.json."""
    from .calibrate import calibrate as fit

    record = fit(model_dir, data, **options)
    temperature = record["temperature"] if record["temperature"] is not None else record["temperatures"]
    before, after = record["before"], record["after"]
    click.echo(f"temperature {temperature} fitted on {record['rows']:,} rows: NLL {before['nll']:.4f} -> "
               f"{after['nll']:.4f}, ECE {before['ece']:.4f} -> {after['ece']:.4f}; recorded in {model_dir}/bertbatch.json")


@cli.command("eval")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True))
@click.option("--output", "-o", "output_dir", type=click.Path(file_okay=False),
              help="Report directory: metrics.json, confusion_<graph>.csv/.png, summary.md.")
@graphs_option("Comma-separated: fp32, int8, fp16, torch, an .onnx path, or default (best for the provider).",
               default="default", show_default=True)
@text_column_option
@label_column_option
@click.option("--label-delimiter", default=",", show_default=True, help="Separator of labels in one cell (multi-label).")
@click.option("--threshold", default=0.5, show_default=True, help="Multi-label decision threshold.")
@provider_option
@threads_option("this machine's tune record, else the CPUs this process may use")
@max_tokens_option
@max_length_option
@truncation_options
@click.option("--min-scores", help="Comma-separated --min-score values of the risk-coverage table "
              "(default: 0.5 to 0.99).")
@_friendly
def eval_(model_dir, data, graphs, output_dir, min_scores, **options):
    """Metrics of MODEL_DIR's graph(s) on labeled DATA; prints a Markdown summary."""
    from .config import EvalConfig
    from .evaluate import DEFAULT_GRAPH, evaluate

    if min_scores:
        options["min_scores"] = tuple(_float_list(min_scores))
    report = evaluate(model_dir, data, output_dir, EvalConfig(graphs=_csv_list(graphs) or (DEFAULT_GRAPH,), **options))
    click.echo(report["summary"], nl=False)
    if output_dir:
        click.echo(f"\nReport written to {output_dir}")


@cli.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@graphs_option("Comma-separated: fp32, int8, fp16, torch, .onnx paths (default: every graph present for the provider).")
@provider_option
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_int_list)
@click.option("--seq-lengths", default="16,64,128,256", show_default=True, callback=_int_list,
              help="Synthetic input lengths in tokens (ignored with --data).")
@click.option("--runs", default=20, show_default=True, help="Timed batches per measurement.")
@click.option("--warmup", default=3, show_default=True, help="Untimed batches before timing.")
@click.option("--data", type=click.Path(exists=True), help="Time real texts (their length mix, in --text-column) "
              "instead of synthetic ones.")
@text_column_option
@threads_option()
@click.option("--output", "-o", "output_dir", type=click.Path(file_okay=False),
              help="Directory for results.jsonl, summary.md and latency.png.")
@_friendly
def bench(model_dir, graphs, output_dir, **options):
    """Latency percentiles and rows/s of MODEL_DIR's graphs on this machine; prints a table."""
    from .bench import benchmark, summary_markdown
    from .config import BenchConfig

    results = benchmark(model_dir, BenchConfig(graphs=_csv_list(graphs), **options), output_dir)
    click.echo(summary_markdown(results), nl=False)
    if output_dir:
        click.echo(f"\nResults written to {output_dir}")


def main():
    cli(prog_name="bertbatch")
