#!/usr/bin/env python3
"""Random parity check: `spillway tokenize --lines` against tiktoken (mistral-common's own
encoder) on the Tekken vocabulary, over generated strings rich in the characters where
regex engines disagree (combining marks, Devanagari, Thai, CJK, emoji, odd whitespace).

    pip install tiktoken
    python3 tests/scripts/tekken_parity.py [--cases N] [--seed S] [--bin PATH]

Exits 1 and prints the first differences if any id differs.
"""
import argparse, base64, json, os, random, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.environ.get("SPILLWAY_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))


def tiktoken_encoding(path):
    import tiktoken

    d = json.load(open(path))
    cfg = d["config"]
    n = cfg["default_vocab_size"] - cfg["default_num_special_tokens"]
    ranks = {base64.b64decode(v["token_bytes"]): v["rank"] for v in d["vocab"][:n]}
    enc = tiktoken.Encoding(name="tekken", pat_str=cfg["pattern"], mergeable_ranks=ranks,
                            special_tokens={})
    return enc, cfg["default_num_special_tokens"]


POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    " \t\r\n\r\n  ",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "\u0300\u0301\u0308\u0327\u20dd\u0483",          # combining marks
    "नमस्ते दुनिया आप कैसे हैं क्षत्रिय",                 # Devanagari
    "สวัสดีครับ ภาษาไทย น้ำ",                            # Thai
    "你好世界今天天气很好。，！",                          # CJK
    "こんにちはカタカナひらがなー",
    "😀🎉👍🏽👨\u200d👩\u200d👧🇫🇷🇯🇵",
    "ʰʲˈǅǈᾈ\u00a0\u2028\u3000\u0085\u000b\u000c\u200b\u200d",
    "éÉßøØłŁçÇñÑ",
    "٣٤৫𝟙Ⅻ½",
]


def random_text(rng):
    out = []
    for _ in range(rng.randint(0, 40)):
        r = rng.random()
        if r < 0.85:
            out.append(rng.choice(rng.choice(POOLS)))
        else:
            c = rng.randint(0, 0x10FFFF)
            if 0xD800 <= c <= 0xDFFF:
                c = 0x20
            out.append(chr(c))
    return "".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "spillway"))
    ap.add_argument("--tekken", default=os.path.join(FIXTURES, "tekken_240911.json"))
    args = ap.parse_args()
    enc, n_special = tiktoken_encoding(args.tekken)
    rng = random.Random(args.seed)
    texts = [random_text(rng) for _ in range(args.cases)]
    stdin = "".join(json.dumps(t) + "\n" for t in texts).encode()
    out = subprocess.run([args.bin, "tokenize", "--tekken", args.tekken, "--lines"],
                         input=stdin, capture_output=True, check=True)
    ours = [json.loads(l) for l in out.stdout.decode().splitlines()]
    assert len(ours) == len(texts), (len(ours), len(texts))
    bad = 0
    for t, got in zip(texts, ours):
        want = [i + n_special for i in enc.encode(t, allowed_special=set(), disallowed_special=())]
        if got != want:
            bad += 1
            if bad <= 5:
                print(f"DIFF {t!r}\n  ours     {got}\n  tiktoken {want}")
    print(f"{len(texts) - bad} passed, {bad} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
