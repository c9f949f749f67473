"""Hive partitions: `key=value` directories in come through as columns; `--partition-by` writes them out, and
DuckDB (hive_partitioning) reads the output back as the input joined with its labels."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pyarrow import csv

from bertbatch import score_file
from bertbatch.cli import cli
from bertbatch.errors import InputError
from helpers import make_texts

duckdb = pytest.importorskip("duckdb")

# (directory names as Hive/Spark write them, the values they stand for)
LAYOUT = [
    ("dt=2024-01-01/region=eu", "2024-01-01", "eu"),
    ("dt=2024-01-01/region=us%2Fwest", "2024-01-01", "us/west"),  # '/' percent-encoded
    ("dt=2024-01-02/region=__HIVE_DEFAULT_PARTITION__", "2024-01-02", None),  # null
    ("dt=2024-01-02/region=eu", "2024-01-02", "eu"),
]  # in path order, the order files are read in


def _partitioned_input(root):
    texts, _ = make_texts(40 * len(LAYOUT), seed=11)
    expected = []
    for n, (folder, dt, region) in enumerate(LAYOUT):
        (root / folder).mkdir(parents=True)
        rows = texts[n * 40:(n + 1) * 40]
        ids = [f"{n}-{i:03d}" for i in range(40)]
        table = pa.table({"id": ids, "text": rows})
        if n % 2:
            csv.write_csv(table, root / folder / "data.csv")
        else:
            pq.write_table(table, root / folder / "data.parquet")
        expected += [{"id": i, "dt": dt, "region": region} for i in ids]
    (root / "_SUCCESS").write_text("")
    return expected


def test_hive_partitioned_input_keeps_partition_columns_exact(tmp_path, tiny_exported):
    expected = _partitioned_input(tmp_path / "in")
    out = tmp_path / "out.parquet"
    score_file(tmp_path / "in", out, tiny_exported)
    table = pq.read_table(out)
    assert table.column_names[:4] == ["id", "text", "dt", "region"]
    assert table.schema.field("dt").type == pa.string() and table.schema.field("region").type == pa.string()
    assert table.select(["id", "dt", "region"]).to_pylist() == expected


def test_a_column_also_named_by_a_partition_directory_is_refused(tmp_path, tiny_exported):
    (tmp_path / "in" / "id=7").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"], "text": ["good"]}), tmp_path / "in" / "id=7" / "x.parquet")
    with pytest.raises(InputError, match="column 'id' is also a Hive partition directory"):
        score_file(tmp_path / "in", tmp_path / "o.parquet", tiny_exported)


def test_partition_by_output_read_by_duckdb_equals_input_joined_with_labels(tmp_path, tiny_exported):
    _partitioned_input(tmp_path / "in")
    flat = tmp_path / "flat.parquet"
    score_file(tmp_path / "in", flat, tiny_exported)
    out = tmp_path / "out"
    done = CliRunner().invoke(cli, ["score", str(tiny_exported), str(tmp_path / "in"), "-o", str(out),
                                    "--partition-by", "dt,region", "--rows-per-part", "50", "--silent"])
    assert done.exit_code == 0, done.output
    assert (out / "_SUCCESS").exists()
    assert (out / "dt=2024-01-01" / "region=us%2Fwest").is_dir()
    con = duckdb.connect()
    back = con.sql(f"select id, text, dt, region, label, score from read_parquet('{out}/**/*.parquet', "
                   "hive_partitioning = true, hive_types_autocast = false) order by id").fetch_arrow_table()
    src = tmp_path / "in"
    hive = "hive_partitioning = true, hive_types_autocast = false"
    joined = con.sql(f"""
        with input as (
            select id, text, dt, region from read_parquet('{src}/**/*.parquet', {hive})
            union all
            select id, text, dt, region from read_csv('{src}/**/*.csv', {hive}, all_varchar = true))
        select input.id, input.text, input.dt, input.region, labels.label, labels.score
        from input join read_parquet('{flat}') labels on labels.id = input.id order by input.id""").fetch_arrow_table()
    assert back.num_rows == 160
    assert back.to_pylist() == joined.to_pylist()
    # inside each partition directory the rows keep their input order
    for folder in (out / "dt=2024-01-01" / "region=eu").iterdir():
        ids = pq.read_table(folder)["id"].to_pylist()
        assert ids == sorted(ids)


def test_partition_by_resume_of_a_finished_job_changes_nothing(tmp_path, tiny_exported):
    _partitioned_input(tmp_path / "in")
    out = tmp_path / "out"
    score_file(tmp_path / "in", out, tiny_exported, partition_by=("region",), rows_per_part=30)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert any("region=__HIVE_DEFAULT_PARTITION__" in str(p) for p in before)
    summary = score_file(tmp_path / "in", out, tiny_exported, partition_by=("region",), rows_per_part=30, resume=True)
    assert summary["rows_this_run"] == 0 and summary["rows_written"] == 160
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    score_file(tmp_path / "in", out, tiny_exported, rows_per_part=30, overwrite=True)  # removes the partitions
    assert not [p for p in out.iterdir() if p.is_dir()]


def test_partition_by_needs_a_directory_and_known_columns(tmp_path, tiny_exported):
    _partitioned_input(tmp_path / "in")
    with pytest.raises(InputError, match="--partition-by needs a directory output"):
        score_file(tmp_path / "in" / "dt=2024-01-01" / "region=eu" / "data.parquet", tmp_path / "o.parquet",
                   tiny_exported, partition_by=("id",))
    with pytest.raises(InputError, match=r"--partition-by columns \['nope'\] are not in the output"):
        score_file(tmp_path / "in", tmp_path / "o2", tiny_exported, partition_by=("nope",))


def test_partition_types_type_the_partition_columns(tmp_path, tiny_exported):
    _partitioned_input(tmp_path / "in")
    out = tmp_path / "out.parquet"
    done = CliRunner().invoke(cli, ["score", str(tiny_exported), str(tmp_path / "in"), "-o", str(out),
                                    "--partition-types", "dt:date32", "--silent"])
    assert done.exit_code == 0, done.output
    table = pq.read_table(out)
    assert table.schema.field("dt").type == pa.date32() and table.schema.field("region").type == pa.string()
    assert sorted({str(d) for d in table["dt"].to_pylist()}) == ["2024-01-01", "2024-01-02"]
    with pytest.raises(InputError, match=r"partition value region='eu' is not a int32"):
        score_file(tmp_path / "in", tmp_path / "o2.parquet", tiny_exported, partition_types=("region:int32",))
    with pytest.raises(InputError, match=r"--partition-types names \['year'\], but the inputs have no such"):
        score_file(tmp_path / "in", tmp_path / "o3.parquet", tiny_exported, partition_types=("year:int32",))
