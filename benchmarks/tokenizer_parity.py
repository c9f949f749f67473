"""nanotoken vs the tokenizers library at scale: `tokenize` both ways on real and random corpora, compared exactly.

Corpora: the SMS Spam table, the 10,605 movie-review sentences export uses as out-of-domain text, 30,000
seeded random-Unicode strings (ASCII, Latin to CJK, private use, astral planes, control characters) and 500
long documents (40 sentences each, for windows). Settings: truncate at 128 and 512, windows at 16/stride 4,
64/stride 0 and 7/stride 2. Prints one line per corpus x setting; exits 1 on any difference in ids, segment
offsets, owners or truncation flags.

    .venv/bin/python benchmarks/tokenizer_parity.py [--model models/sms-spam]
"""

from __future__ import annotations

import argparse
import random
import sys

import numpy as np


def random_text(rng: random.Random) -> str:
    chars = []
    for _ in range(rng.randint(1, 400)):
        r = rng.random()
        if r < 0.6:
            chars.append(rng.choice("abcdefghijklmnopqrstuvwxyz ABCXYZ.,!?'-0123456789  "))
        elif r < 0.8:
            chars.append(chr(rng.randint(0x80, 0x2FFF)))
        elif r < 0.9:
            chars.append(chr(rng.randint(0x3000, 0xD7FF)))
        else:
            chars.append(chr(rng.choice([rng.randint(0xE000, 0xFFFF), rng.randint(0x10000, 0x1FFFF), rng.randint(0, 0x1F)])))
    return "".join(chars)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/sms-spam", help="a model directory (its tokenizer.json)")
    args = parser.parse_args()

    from bertbatch.assets import sms_spam_table
    from bertbatch.gates import out_of_domain_texts
    from bertbatch.modeldir import ModelDir
    from bertbatch.tokenize import tokenize, wordpiece_twin

    rng = random.Random(5)
    ood, _ = out_of_domain_texts(10605)
    corpora = {"sms": sms_spam_table()["text"].to_pylist(), "ood": ood,
               "random": [random_text(rng) for _ in range(30000)],
               "documents": [" ".join(rng.sample(ood, 40)) for _ in range(500)]}
    model = ModelDir.open(args.model)
    differences = 0
    for max_length, window, stride in [(128, False, 0), (512, False, 0), (16, True, 4), (64, True, 0), (7, True, 2)]:
        tokenizer = model.tokenizer(max_length, stride=stride)
        twin = wordpiece_twin(tokenizer)
        if twin is None:
            raise SystemExit(f"{args.model}: nanotoken does not take this tokenizer; nothing to compare")
        for name, texts in corpora.items():
            fast = tokenize(tokenizer, texts, max_length, window, False, wordpiece=twin)
            slow = tokenize(tokenizer, texts, max_length, window, False)
            same = all(np.array_equal(getattr(fast, f), getattr(slow, f)) for f in ("ids", "offsets", "owner", "truncated"))
            differences += not same
            mode = f"window {max_length}/stride {stride}" if window else f"truncate {max_length}"
            print(f"{mode:>22}  {name:>9}: {len(texts):>6} texts, {len(fast.owner):>7} segments, "
                  f"{'identical' if same else 'DIFFERENT'}")
    print(f"{differences} differences")
    sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
