"""Hostile inputs: every bad input class fails before the first row is scored, with a one-line message that
names the file (and row/line/column) and says what to do; readable oddities are read, rows conserved."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import csv

from bertbatch.errors import EXIT_INPUT
from hostile_helpers import cli, texts_table


def _dir_with_bad_last_file(tmp_path, bad_name: str, bad_bytes: bytes):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        pq.write_table(texts_table(50, f"{i}-"), src / f"a{i}.parquet")
    (src / bad_name).write_bytes(bad_bytes)
    return src


def _nothing_written(out):
    return not out.exists() or not any(out.iterdir())


def test_empty_parquet_file_in_a_directory_fails_before_any_output(tmp_path, model):
    src = _dir_with_bad_last_file(tmp_path, "z.parquet", b"")
    out = tmp_path / "out"
    cli("score", model, src, "-o", out).assert_error(EXIT_INPUT, "z.parquet", "not a readable Parquet file")
    assert _nothing_written(out)


def test_truncated_parquet_footer_in_a_directory_fails_before_any_output(tmp_path, model):
    good = tmp_path / "good.parquet"
    pq.write_table(texts_table(500), good)
    src = _dir_with_bad_last_file(tmp_path, "z.parquet", good.read_bytes()[:-20])
    out = tmp_path / "out"
    cli("score", model, src, "-o", out).assert_error(EXIT_INPUT, "z.parquet")
    assert _nothing_written(out)


def test_header_only_csv_in_a_directory_fails_before_any_output(tmp_path, model):
    src = _dir_with_bad_last_file(tmp_path, "z.csv", b"id,text\n")
    out = tmp_path / "out"
    cli("score", model, src, "-o", out).assert_error(EXIT_INPUT, "z.csv", "no data rows")
    assert _nothing_written(out)


def test_late_bad_file_fix_suggested_by_the_message_then_works(tmp_path, model):
    src = _dir_with_bad_last_file(tmp_path, "z.csv", b"id,text\n")
    out = tmp_path / "out"
    cli("score", model, src, "-o", out).assert_error(EXIT_INPUT, "--on-bad-rows reject")
    done = cli("score", model, src, "-o", out, "--on-bad-rows", "reject")
    done.assert_ok()
    assert (out / "_SUCCESS").exists()


def test_zero_row_parquet_with_a_schema_is_read_as_no_rows_in_reject_mode(tmp_path, model):
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(texts_table(20), src / "a.parquet")
    pq.write_table(texts_table(0).cast(texts_table(1).schema), src / "b.parquet")
    out = tmp_path / "out.parquet"
    cli("score", model, src / "a.parquet", src / "b.parquet", "-o", out, "--on-bad-rows", "reject").assert_ok()
    assert pq.read_table(out).num_rows == 20


def test_duplicate_text_column_name_is_a_message(tmp_path, model):
    src = tmp_path / "dup.parquet"
    pq.write_table(pa.table([pa.array(["a"]), pa.array(["b"])], names=["text", "text"]), src)
    cli("score", model, src, "-o", tmp_path / "o.parquet").assert_error(EXIT_INPUT, "dup.parquet", "duplicate column", "text")


def test_duplicate_other_column_name_in_csv_is_a_message(tmp_path, model):
    src = tmp_path / "dup.csv"
    src.write_text("id,id,text\n1,2,great\n")
    out = tmp_path / "o.parquet"
    cli("score", model, src, "-o", out).assert_error(EXIT_INPUT, "dup.csv", "duplicate column", "'id'")
    assert not out.exists()


def test_map_column_written_to_csv_becomes_json_text(tmp_path, model):
    src = tmp_path / "map.parquet"
    attrs = pa.array([[("k", "v")], []], pa.map_(pa.string(), pa.string()))
    pq.write_table(pa.table({"attrs": attrs, "text": ["great", "awful"]}), src)
    out = tmp_path / "o.csv"
    cli("score", model, src, "-o", out).assert_ok()
    rows = csv.read_csv(out).to_pylist()
    assert [r["attrs"] for r in rows] == ['[["k", "v"]]', "[]"]


def test_ragged_rows_are_rejected_with_their_real_line_numbers(tmp_path, model):
    lines = ["id,text"] + [f"{i},row {i}" for i in range(3000)]
    lines[5] = "x,y,z"  # line 6 of the file
    lines[2500] = "q,w,e,r"  # line 2501
    src = tmp_path / "ragged.csv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.parquet"
    cli("score", model, src, "-o", out, "--on-bad-rows", "reject").assert_ok()
    rejects = csv.read_csv(out.with_name("o.parquet.rejects.csv")).to_pylist()
    assert [r["where"] for r in rejects] == ["record 6", "record 2501"]
    assert pq.read_table(out).num_rows + len(rejects) == 3000


def test_ragged_row_error_names_its_line(tmp_path, model):
    src = tmp_path / "ragged.csv"
    src.write_text("id,text\n" + "".join(f"{i},ok\n" for i in range(100)) + "7,too,many\n")
    cli("score", model, src, "-o", tmp_path / "o.parquet").assert_error(EXIT_INPUT, "ragged.csv", "record 102",
                                                                          "expected 2 columns, found 3")


def test_record_numbers_count_records_not_the_lines_inside_quoted_cells(tmp_path, model):
    """A rejected row's identity is its record number (header = 1, blank lines skipped), ragged or not."""
    src = tmp_path / "multi.csv"
    src.write_bytes(b'id,text\n1,"two\nlines"\n\n2,"three\nlines\nhere"\n3,x,y\n4,fine\n5,bad \xff\n')
    out = tmp_path / "o.parquet"
    cli("score", model, src, "-o", out, "--on-bad-rows", "reject").assert_ok()
    rejects = csv.read_csv(out.with_name("o.parquet.rejects.csv")).to_pylist()
    assert [r["where"] for r in rejects] == ["record 4", "record 6"]
    assert pq.read_table(out)["id"].to_pylist() == ["1", "2", "4"]


def test_invalid_utf8_rows_keep_their_identity_after_earlier_rejects(tmp_path, model):
    body = [b"id,text"] + [f"{i},row {i}".encode() for i in range(1, 11)]
    body[3] = b"3,bad \xff one"
    body[4] = b"4,bad \xfe two"
    body[8] = b"8,bad \xff three"
    src = tmp_path / "utf8.csv"
    src.write_bytes(b"\n".join(body) + b"\n")
    out = tmp_path / "o.parquet"
    cli("score", model, src, "-o", out, "--on-bad-rows", "reject").assert_ok()
    rejects = csv.read_csv(out.with_name("o.parquet.rejects.csv")).to_pylist()
    assert [r["where"] for r in rejects] == ["record 4", "record 5", "record 9"]
    assert pq.read_table(out)["id"].to_pylist() == ["1", "2", "5", "6", "7", "9", "10"]


def test_invalid_utf8_numbers_do_not_slip_across_blocks(tmp_path):
    from bertbatch.source import Rejects, read_batches

    rows = [f"{i},row {i}".encode() for i in range(1, 300_001)]  # ~4.5 MB: more than one CSV block
    for i in (10, 150_000, 290_000):
        rows[i - 1] = f"{i},bad ".encode() + b"\xff"
    src = tmp_path / "utf8.csv"
    src.write_bytes(b"id,text\n" + b"\n".join(rows) + b"\n")
    rejects = Rejects()
    ids = [i for batch in read_batches(src, ["id", "text"], 100_000, rejects) for i in batch.column(0).to_pylist()]
    assert [r["where"] for r in rejects.rows] == ["record 11", "record 150001", "record 290001"]
    assert len(ids) == 299_997 and "150000" not in ids


def test_cell_larger_than_the_csv_block_is_read(tmp_path, model, monkeypatch):
    from bertbatch import source

    # ~9 MiB: more than two 4 MiB blocks, so pyarrow cannot carry the cell over from one block into the next
    # (a 7 MiB cell can be); the read must be retried with a larger block
    big = "word " * ((9 << 20) // 5)
    assert len(big) > 2 * source.CSV_BLOCK
    rows = [f"{i},row {i}" for i in range(20_000)]
    rows.insert(10_000, f'big,"{big}"')
    src = tmp_path / "big.csv"
    src.write_text("id,text\n" + "\n".join(rows) + "\n")
    passes = []  # block size of each read pass, seen from outside the reader
    read_pass = source._csv_pass
    monkeypatch.setattr(source, "_csv_pass", lambda *a: (passes.append(a[4]), read_pass(*a))[1])
    out = tmp_path / "o.parquet"
    cli("score", model, src, "-o", out, "--max-length", "16").assert_ok()
    assert passes == [source.CSV_BLOCK, 4 * source.CSV_BLOCK]  # the cell did not fit: one retry, 4x the block
    table = pq.read_table(out, columns=["id", "text", "truncated"])
    assert table.num_rows == 20_001 and table["id"][10_000].as_py() == "big"
    assert table["text"][10_000].as_py() == big
    assert table["id"].to_pylist() == [f"{i}" for i in range(10_000)] + ["big"] + [f"{i}" for i in range(10_000, 20_000)]
    assert table["truncated"][10_000].as_py() is True


def test_cell_larger_than_the_block_with_rejects_keeps_every_row(tmp_path, model, monkeypatch):
    from bertbatch import source

    big = "x" * (9 << 20)  # more than two blocks: the read is retried (see the test above)
    rows = [f"{i},row {i}" for i in range(5000)]
    rows.insert(3000, f'big,"{big}"')
    rows.insert(100, "a,b,c")
    src = tmp_path / "big.csv"
    src.write_text("id,text\n" + "\n".join(rows) + "\n")
    passes = []
    read_pass = source._csv_pass
    monkeypatch.setattr(source, "_csv_pass", lambda *a: (passes.append(a[4]), read_pass(*a))[1])
    out = tmp_path / "o.parquet"
    cli("score", model, src, "-o", out, "--on-bad-rows", "reject").assert_ok()
    assert passes == [source.CSV_BLOCK, 4 * source.CSV_BLOCK]
    rejects = csv.read_csv(out.with_name("o.parquet.rejects.csv")).to_pylist()
    assert [r["where"] for r in rejects] == ["record 102"]  # rejected once, though the file was read twice
    table = pq.read_table(out, columns=["id", "text"])
    assert table.num_rows == 5001 and table["text"][table["id"].to_pylist().index("big")].as_py() == big


def test_truncated_gzip_csv_is_a_message_and_no_output(tmp_path, model):
    gz = gzip.compress(("id,text\n" + "".join(f"{i},hello there\n" for i in range(20000))).encode())
    src = tmp_path / "t.csv.gz"
    src.write_bytes(gz[: len(gz) // 2])
    out = tmp_path / "o.parquet"
    cli("score", model, src, "-o", out).assert_error(EXIT_INPUT, "t.csv.gz")
    assert not out.exists() and not list(tmp_path.glob(".o.parquet*"))


def test_text_column_of_integers_is_a_message(tmp_path, model):
    src = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), src)
    cli("score", model, src, "-o", tmp_path / "o.parquet").assert_error(EXIT_INPUT, "ints.parquet", "int64")


def test_text_column_missing_in_one_file_of_many_fails_before_output(tmp_path, model):
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(texts_table(30), src / "a.parquet")
    pq.write_table(pa.table({"body": ["x"]}), src / "b.parquet")
    out = tmp_path / "out"
    cli("score", model, src, "-o", out).assert_error(EXIT_INPUT, "b.parquet", "Column 'text' not found")
    assert _nothing_written(out)


def test_directory_of_markers_only_is_a_message(tmp_path, model):
    src = tmp_path / "in"
    src.mkdir()
    (src / "_SUCCESS").write_text("")
    (src / ".hidden.parquet").write_text("")
    cli("score", model, src, "-o", tmp_path / "o").assert_error(EXIT_INPUT, "holds no")


def test_missing_input_is_a_message(tmp_path, model):
    cli("score", model, tmp_path / "nope.csv", "-o", tmp_path / "o.parquet").assert_error(EXIT_INPUT, "nope.csv", "does not exist")


def test_output_equal_to_input_is_refused(tmp_path, model):
    src = tmp_path / "in.parquet"
    pq.write_table(texts_table(5), src)
    cli("score", model, src, "-o", src, "--overwrite").assert_error(EXIT_INPUT, "would overwrite the input")
    assert pq.read_table(src).num_rows == 5


def test_mixed_schemas_are_refused_before_output(tmp_path, model):
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"id": pa.array([1], pa.int64()), "text": ["a"]}), src / "a.parquet")
    pq.write_table(pa.table({"id": ["x"], "text": ["b"]}), src / "b.parquet")
    out = tmp_path / "out"
    cli("score", model, src, "-o", out).assert_error(EXIT_INPUT, "different schemas")
    assert _nothing_written(out)


def test_bom_before_the_header_still_finds_the_text_column(tmp_path, model):
    src = tmp_path / "bom.csv"
    src.write_bytes("\ufeffid,text\n1,great\n".encode())
    out = tmp_path / "o.parquet"
    cli("score", model, src, "-o", out).assert_ok()
    assert pq.read_table(out).column_names[:2] == ["id", "text"]


def test_an_empty_file_late_in_a_directory_fails_before_the_first_row_is_scored(tmp_path, model):
    """Class 4: the zero-row file was found after the files before it had been scored."""
    from bertbatch import score_file
    from bertbatch.errors import InputError

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        pq.write_table(texts_table(200, f"{i}-"), src / f"a{i}.parquet")
    # a header-only CSV: a zero-row Parquet part is accepted (Spark's empty parts, test_hostile_encodings.py)
    (src / "z.csv").write_text("id,text\n")
    scored = []
    try:
        score_file(src, tmp_path / "out", model, progress=lambda done, total: scored.append(done))
    except InputError as exc:
        assert "z.csv has no data rows" in str(exc) and "--on-bad-rows reject" in str(exc)
    else:
        raise AssertionError("a zero-row file in error mode must be refused")
    assert scored == []


def test_the_same_file_given_twice_is_refused(tmp_path, model):
    """A row's identity is (file, record): scoring one file twice would make two rows share it."""
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(texts_table(5), src / "a.parquet")
    out = tmp_path / "o.parquet"
    cli("score", model, src, src / "a.parquet", "-o", out).assert_error(EXIT_INPUT, "a.parquet", "given twice")
    assert not out.exists()
