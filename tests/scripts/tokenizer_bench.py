#!/usr/bin/env python3
"""Encoding throughput: `spillway tokenize` against tiktoken (mistral-common's own encoder)
on the same Tekken vocabulary and pattern, over a few MB of mixed text built from the
tokenizer corpus and golden texts (English, French, German, Russian, Chinese, Japanese,
Arabic, Hindi, code, JSON, emoji, whitespace).

    cargo build --release -p spillway      # (with CARGO_TARGET_DIR as you use it)
    pip install tiktoken
    python3 tests/scripts/tokenizer_bench.py [--mb 4] [--bin PATH]

Both sides are timed single-threaded on encoding alone (vocabulary loading excluded: our
binary reports its own encode time with --timings), best of --runs, and the ids are
checked equal.
"""
import argparse, base64, json, os, random, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.environ.get("SPILLWAY_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))


def mixed_text(megabytes, seed):
    texts = [json.loads(l)["text"] for l in open(os.path.join(FIXTURES, "tokenizer-golden.jsonl"))]
    texts += [json.loads(l) for l in open(os.path.join(FIXTURES, "tokenizer-corpus.txt")) if l.strip()]
    texts = [t for t in texts if t]
    rng = random.Random(seed)
    out, size = [], 0
    while size < megabytes * 1_000_000:
        t = rng.choice(texts)
        sep = rng.choice([" ", "\n", "\n\n", ". ", " - "])
        out.append(t + sep)
        size += len((t + sep).encode())
    return "".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "spillway"))
    ap.add_argument("--tekken", default=os.path.join(FIXTURES, "tekken_240911.json"))
    args = ap.parse_args()

    import tiktoken

    text = mixed_text(args.mb, args.seed)
    n_bytes = len(text.encode())
    d = json.load(open(args.tekken))
    cfg = d["config"]
    n_special = cfg["default_num_special_tokens"]
    ranks = {base64.b64decode(v["token_bytes"]): v["rank"]
             for v in d["vocab"][: cfg["default_vocab_size"] - n_special]}
    enc = tiktoken.Encoding(name="tekken", pat_str=cfg["pattern"], mergeable_ranks=ranks,
                            special_tokens={})

    best_tt = float("inf")
    for _ in range(args.runs):
        t = time.perf_counter()
        theirs = enc.encode_ordinary(text)
        best_tt = min(best_tt, time.perf_counter() - t)

    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode())
        path = f.name
    best_ours, ours = float("inf"), None
    try:
        for _ in range(args.runs):
            with open(path, "rb") as stdin:
                out = subprocess.run([args.bin, "tokenize", "--tekken", args.tekken, "--timings"],
                                     stdin=stdin, capture_output=True, check=True)
            stats = dict(kv.split("=") for kv in out.stderr.decode().split())
            best_ours = min(best_ours, float(stats["encode_ms"]) / 1e3)
            ours = json.loads(out.stdout)
    finally:
        os.unlink(path)

    same = ours == [i + n_special for i in theirs]
    print(f"text: {n_bytes / 1e6:.2f} MB, {len(theirs)} tokens, ids identical: {same}")
    print(f"tiktoken {tiktoken.__version__}: {n_bytes / 1e6 / best_tt:8.2f} MB/s")
    print(f"spillway tokenize:   {n_bytes / 1e6 / best_ours:8.2f} MB/s "
          f"(x{best_tt / best_ours:.2f})")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
