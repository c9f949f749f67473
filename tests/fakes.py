"""A fake runner whose logits encode each row's identity, to prove batching never mixes rows up."""

from __future__ import annotations

import numpy as np


class RowIndexRunner:
    """Reads the row number written as digit tokens in the text ("row 1 7 ...") and returns [n, -n].

    Any mix-up between rows, any padding leaking into a row, or any reordering shows as a wrong number.
    """

    provider = "CPUExecutionProvider"
    graph = None  # runs no file
    input_names = ["input_ids", "attention_mask", "token_type_ids"]
    threads = 1
    num_labels = 2

    def __init__(self, tokenizer_json: str):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer_json)
        self.digit = {tok.token_to_id(str(d)): d for d in range(10)}
        self.calls: list[tuple[int, int]] = []

    def run(self, input_ids, attention_mask, token_type_ids=None):
        self.calls.append(input_ids.shape)
        out = np.zeros((input_ids.shape[0], 2), dtype=np.float32)
        for r, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            digits = [self.digit[t] for t, m in zip(ids, mask) if m and t in self.digit]
            n = int("".join(map(str, digits))) if digits else -1
            out[r] = [n, -n]
        return out


def row_text(i: int, filler: int) -> str:
    return "row " + " ".join(str(i)) + " word" * filler
