"""Hostile encodings and warehouse inputs: bytes that are not UTF-8 outside the checked path get bertbatch's own
one-line message naming file, record and column (no `Exception ignored ... Traceback`), messages say the real
reason, and what warehouse writers commonly produce (categoricals, empty parts, large_string, nullability) is
read with every row scored once."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from hostile_helpers import cli, texts_table


def _csv_with_a_ragged_latin1_row(path, good_rows: int):
    rows = b"".join(b"%06d,great movie %d\n" % (i, i) for i in range(good_rows))
    path.write_bytes(b"id,text\n" + rows + b"999999,caf\xe9 cr\xe8me,extra\n" + b"000100,the end\n")
    return path


def _invalid_utf8_strings(values: list[bytes]) -> pa.Array:
    """A Parquet `string` column whose bytes are not all UTF-8 (as a careless writer leaves it)."""
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())


def test_ragged_latin1_row_is_named_with_its_record_and_no_traceback(tmp_path, model):
    src = _csv_with_a_ragged_latin1_row(tmp_path / "in.csv", 3)
    result = cli("score", model, src, "-o", tmp_path / "out.parquet")
    result.assert_error(1, "in.csv", "record 5", "not valid UTF-8", "expected 2 columns, found 3")
    assert "Exception ignored" not in result.output and "cannot read the CSV header" not in result.output


def test_ragged_latin1_row_past_the_first_block_names_its_true_record(tmp_path, model):
    src = _csv_with_a_ragged_latin1_row(tmp_path / "in.csv", 300_000)  # ~7 MB: past the 4 MiB first block
    result = cli("score", model, src, "-o", tmp_path / "out.parquet")
    result.assert_error(1, "in.csv", "record 300002")
    assert "after 0 data rows" not in result.output and "Exception ignored" not in result.output


def test_ragged_latin1_row_is_rejected_with_its_record_and_the_rest_scored(tmp_path, model):
    src = _csv_with_a_ragged_latin1_row(tmp_path / "in.csv", 3)
    (tmp_path / "in.csv").write_bytes(src.read_bytes() + b"000101,tr\xe8s bien\n")  # a well-formed Latin-1 row too
    out = tmp_path / "out.parquet"
    result = cli("score", model, src, "-o", out, "--on-bad-rows", "reject")
    result.assert_ok()
    assert "Exception ignored" not in result.output and "Traceback" not in result.output
    assert pq.read_table(out)["id"].to_pylist() == ["000000", "000001", "000002", "000100"]
    rejects = (tmp_path / "out.parquet.rejects.csv").read_text()
    assert "record 5" in rejects and "expected 2 columns, found 3" in rejects
    assert "record 7" in rejects and "invalid UTF-8 in column 'text'" in rejects


def test_parquet_string_column_with_invalid_utf8_names_file_row_and_column(tmp_path, model):
    src = tmp_path / "in.parquet"
    texts = [b"great movie"] * 10 + [b"caf\xe9"] + [b"awful trip"] * 5
    pq.write_table(pa.table({"id": [str(i) for i in range(16)], "text": _invalid_utf8_strings(texts)}), src)
    cli("score", model, src, "-o", tmp_path / "out.parquet").assert_error(1, "in.parquet", "row 11", "'text'",
                                                                           "invalid UTF-8")


def test_parquet_invalid_utf8_rows_are_rejected_and_counted(tmp_path, model):
    src = tmp_path / "in.parquet"
    notes = [b"ok"] * 10 + [b"\xff\xfe"] + [b"ok"] * 9
    pq.write_table(texts_table(20).append_column("note", _invalid_utf8_strings(notes)), src)
    out = tmp_path / "out.parquet"
    cli("score", model, src, "-o", out, "--on-bad-rows", "reject").assert_ok()
    written = pq.read_table(out)
    assert written.num_rows == 19 and "000010" not in written["id"].to_pylist()
    rejects = (tmp_path / "out.parquet.rejects.csv").read_text()
    assert "row 11" in rejects and "'note'" in rejects


def test_all_data_rows_ragged_names_the_first_ragged_record(tmp_path, model):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f"{i},great,movie\n" for i in range(5)))
    result = cli("score", model, src, "-o", tmp_path / "out.parquet")
    result.assert_error(1, "in.csv", "record 2", "expected 2 columns, found 3")
    assert "no data rows" not in result.output


def test_parquet_files_differing_only_in_nullability_are_read(tmp_path, model):
    table = texts_table(30)
    strict = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string(), nullable=False)])
    pq.write_table(table.slice(0, 10), tmp_path / "a.parquet")
    pq.write_table(table.slice(10).cast(strict), tmp_path / "b.parquet")
    out = tmp_path / "out.parquet"
    cli("score", model, tmp_path / "a.parquet", tmp_path / "b.parquet", "-o", out).assert_ok()
    written = pq.read_table(out)
    assert written["id"].to_pylist() == table["id"].to_pylist()
    assert written.schema.field("id").nullable


def test_differing_types_are_named_column_by_column(tmp_path, model):
    pq.write_table(texts_table(5), tmp_path / "a.parquet")
    pq.write_table(texts_table(5).set_column(0, "id", pa.array(range(5))), tmp_path / "b.parquet")
    cli("score", model, tmp_path / "a.parquet", tmp_path / "b.parquet", "-o", tmp_path / "o.parquet").assert_error(
        1, "'id' is string in", "but int64 in", "b.parquet")


def test_dictionary_encoded_text_column_is_read_as_strings(tmp_path, model):
    table = texts_table(40)
    src = tmp_path / "cat.parquet"
    pq.write_table(table.set_column(1, "text", table["text"].dictionary_encode()), src)
    out = tmp_path / "out.parquet"
    cli("score", model, src, "-o", out).assert_ok()
    written, plain = pq.read_table(out), tmp_path / "plain.parquet"
    assert written.num_rows == 40 and written.schema.field("text").type == pa.string()
    pq.write_table(table, tmp_path / "plain-in.parquet")
    cli("score", model, tmp_path / "plain-in.parquet", "-o", plain).assert_ok()
    assert written["label"].to_pylist() == pq.read_table(plain)["label"].to_pylist()


def test_empty_parquet_part_among_others_is_accepted_and_counted(tmp_path, model):
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(texts_table(25, "a"), src / "part-0.parquet")
    pq.write_table(texts_table(0).cast(texts_table(1).schema), src / "part-1.parquet")  # a schema, no rows
    pq.write_table(texts_table(15, "b"), src / "part-2.parquet")
    out = tmp_path / "out"
    result = cli("score", model, src, "-o", out)
    result.assert_ok()
    ids = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])["id"].to_pylist()
    assert ids == texts_table(25, "a")["id"].to_pylist() + texts_table(15, "b")["id"].to_pylist()


def test_only_empty_parquet_inputs_are_still_refused(tmp_path, model):
    pq.write_table(texts_table(0).cast(texts_table(1).schema), tmp_path / "a.parquet")
    cli("score", model, tmp_path / "a.parquet", "-o", tmp_path / "o.parquet").assert_error(1, "a.parquet",
                                                                                           "no data rows")


def test_string_and_large_string_parts_unify(tmp_path, model):
    table = texts_table(30)
    large = pa.schema([("id", pa.large_string()), ("text", pa.large_string())])
    pq.write_table(table.slice(0, 12), tmp_path / "a.parquet")
    pq.write_table(table.slice(12).cast(large), tmp_path / "b.parquet")
    out = tmp_path / "out.parquet"
    cli("score", model, tmp_path / "a.parquet", tmp_path / "b.parquet", "-o", out).assert_ok()
    written = pq.read_table(out)
    assert written["id"].to_pylist() == table["id"].to_pylist()
    assert written.schema.field("id").type == pa.large_string()


def _with_binary_ids(tmp_path):
    src = tmp_path / "in.parquet"
    table = texts_table(12)
    blobs = [b"k%d" % (i % 2) for i in range(12)]
    blobs[7] = b"\xff\xfe"
    pq.write_table(table.append_column("blob", pa.array(blobs, pa.binary())), src)
    return src


def test_non_utf8_binary_written_to_csv_names_the_column(tmp_path, model):
    out = tmp_path / "out.csv"
    cli("score", model, _with_binary_ids(tmp_path), "-o", out).assert_error(1, "in.parquet", "row 8", "'blob'",
                                                                             "Write Parquet")
    assert not out.exists()


def test_partition_by_a_non_utf8_binary_column_names_the_column(tmp_path, model):
    out = tmp_path / "out"
    cli("score", model, _with_binary_ids(tmp_path), "-o", out, "--partition-by", "blob").assert_error(
        1, "row 8", "'blob'")


def test_non_utf8_binary_is_kept_as_bytes_in_parquet(tmp_path, model):
    out = tmp_path / "out.parquet"
    cli("score", model, _with_binary_ids(tmp_path), "-o", out).assert_ok()
    assert pq.read_table(out)["blob"].to_pylist()[7] == b"\xff\xfe"


def test_ragged_latin1_row_leaves_no_traceback_on_the_real_stderr(tmp_path, model):
    """In-process runs hide `Exception ignored` (pytest owns sys.unraisablehook there): run the real CLI."""
    import os
    import subprocess
    import sys

    src = _csv_with_a_ragged_latin1_row(tmp_path / "in.csv", 3)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "bertbatch", "score", str(model), str(src), "-o",
                           str(tmp_path / "out.parquet")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "record 5" in done.stderr and "cannot read the CSV header" not in done.stderr
