"""The `bertbatch` command: parse options into a config, make one library call, print a summary.

The only module that imports click. Library errors become one-line messages with exit code 1.
"""

from __future__ import annotations

import functools
import json
import logging
import sys

import click

from . import __version__
from .errors import BertbatchError


def _friendly(fn):
    """Turn library exceptions into click errors (message, exit 1) instead of tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BertbatchError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


def _csv_list(value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


@click.group()
@click.version_option(__version__, prog_name="bertbatch")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def cli(verbose, quiet):
    """Fine-tune, export and batch-score BERT-family text classifiers."""
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@cli.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--output", "-o", required=True, type=click.Path(), help="Checkpoint directory to write.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
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
@click.option("--warmup-ratio", default=0.1, show_default=True)
@click.option("--weight-decay", default=0.01, show_default=True)
@click.option("--class-weights", type=click.Choice(["none", "auto"]), default="none", show_default=True)
@click.option("--freeze", default="none", show_default=True, help="none | embeddings | layers:N | encoder")
@click.option("--early-stopping-patience", default=2, show_default=True)
@click.option("--allow-pickle", is_flag=True, help="Allow loading pytorch_model.bin (pickle) base models.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_friendly
def train(data, output, labels, **options):
    """Fine-tune a classifier on a labeled CSV/Parquet table."""
    from .config import TrainConfig
    from .train import fine_tune

    manifest = fine_tune(data, output, TrainConfig(labels=_csv_list(labels), **options))
    metrics = manifest["train"]["test_metrics"]
    headline = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    click.echo(f"Wrote {output} (labels {manifest['labels']}); test {json.dumps(headline)}")


def main():
    cli(prog_name="bertbatch")
