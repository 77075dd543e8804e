#!/usr/bin/env python3
"""Compare two logits files (rows of n_vocab little-endian f32, one row per position, the
layout of `spillway logits --out` and llamacpp_logits.c) against the tolerance table of
../shared/fixtures/README.md:

| class     | min cosine per position | argmax agreement | max abs err / max abs logit |
|-----------|-------------------------|------------------|-----------------------------|
| float     | >= 0.99999              | 100%             | <= 1e-3                     |  (f32, f16)
| quantized | >= 0.9995               | >= 98%           | <= 1e-2                     |

    python3 compare_logits.py --rows N --class float|quantized [--label NAME] REF.f32 GOT.f32

REF is the reference (llama.cpp); "max abs logit" is the largest |logit| in REF. Prints one
line `NAME  rows=... max_abs=... rel=... min_cos=...@row argmax=k/N PASS|FAIL`, then, on a
failure or with -v, the rows that miss (cosine, argmax of each side and the reference's margin
between its top two logits, which tells a near-tie from a real disagreement).
Exits 0 when within tolerance, 1 when not, 2 on unusable input. Uses numpy when installed,
plain Python otherwise (slower, same numbers up to float64 rounding).
"""
import argparse
import math
import os
import sys
from array import array

TOLERANCE = {  # class: (min cosine per row, min argmax agreement, max abs err / max abs logit)
    "float": (0.99999, 1.00, 1e-3),
    "quantized": (0.9995, 0.98, 1e-2),
}


def load_rows(path, rows):
    """The file as a list of `rows` rows (numpy: a 2-D float64 array) and n_vocab."""
    size = os.path.getsize(path)
    if size == 0 or size % (4 * rows) != 0:
        raise ValueError(f"{path}: {size} bytes is not {rows} rows of f32")
    n_vocab = size // (4 * rows)
    try:
        import numpy as np

        return np.fromfile(path, dtype="<f4").astype(np.float64).reshape(rows, n_vocab), n_vocab
    except ImportError:
        data = array("f")
        with open(path, "rb") as f:
            data.frombytes(f.read())
        if sys.byteorder != "little":
            data.byteswap()
        return [data[r * n_vocab:(r + 1) * n_vocab] for r in range(rows)], n_vocab


def row_stats(ref, got):
    """Per row: (max |ref - got|, max |ref|, cosine, argmax ref, argmax got, ref top1 - top2)."""
    stats = []
    try:
        import numpy as np

        if isinstance(ref, np.ndarray):
            diff = np.abs(ref - got).max(axis=1)
            amax = np.abs(ref).max(axis=1)
            dot = (ref * got).sum(axis=1)
            norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
            cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1), 1.0)
            top2 = np.sort(ref, axis=1)[:, -2:]
            for r in range(ref.shape[0]):
                stats.append((float(diff[r]), float(amax[r]), float(cos[r]),
                              int(ref[r].argmax()), int(got[r].argmax()),
                              float(top2[r, 1] - top2[r, 0])))
            return stats
    except ImportError:
        pass
    for a, b in zip(ref, got):
        diff = max(abs(x - y) for x, y in zip(a, b))
        amax = max(abs(x) for x in a)
        dot = math.fsum(x * y for x, y in zip(a, b))
        na = math.sqrt(math.fsum(x * x for x in a))
        nb = math.sqrt(math.fsum(y * y for y in b))
        cos = dot / (na * nb) if na > 0 and nb > 0 else 1.0
        ia = max(range(len(a)), key=a.__getitem__)
        ib = max(range(len(b)), key=b.__getitem__)
        s = sorted(a)[-2:]
        stats.append((diff, amax, cos, ia, ib, s[1] - s[0]))
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, required=True, help="positions (token ids) in each file")
    ap.add_argument("--class", dest="cls", choices=sorted(TOLERANCE), required=True,
                    help="tolerance class: float (f32/f16 models) or quantized")
    ap.add_argument("--label", default="", help="name printed at the start of the line")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every row")
    ap.add_argument("ref", help="reference logits (llama.cpp)")
    ap.add_argument("got", help="logits under test (Spillway)")
    a = ap.parse_args()

    try:
        ref, n_ref = load_rows(a.ref, a.rows)
        got, n_got = load_rows(a.got, a.rows)
    except (OSError, ValueError) as e:
        print(f"{a.label}  error: {e}", file=sys.stderr)
        return 2
    if n_ref != n_got:
        print(f"{a.label}  error: n_vocab {n_ref} (ref) != {n_got}", file=sys.stderr)
        return 2

    stats = row_stats(ref, got)
    if any(not math.isfinite(s[0]) or not math.isfinite(s[2]) for s in stats):
        print(f"{a.label}  error: non-finite logits", file=sys.stderr)
        return 1
    max_abs = max(s[0] for s in stats)
    ref_max = max(s[1] for s in stats)
    rel = max_abs / ref_max if ref_max > 0 else max_abs
    min_cos, min_cos_row = min((s[2], r) for r, s in enumerate(stats))
    agree = sum(1 for s in stats if s[3] == s[4])
    cos_tol, agree_tol, rel_tol = TOLERANCE[a.cls]
    ok = min_cos >= cos_tol and agree >= agree_tol * len(stats) and rel <= rel_tol

    print(f"{a.label}  rows={len(stats)} vocab={n_ref} max_abs={max_abs:.3e} "
          f"max|ref|={ref_max:.4g} rel={rel:.3e} min_cos={min_cos:.7f}@{min_cos_row} "
          f"argmax={agree}/{len(stats)} {'PASS' if ok else 'FAIL'}")
    if not ok or a.verbose:
        print(f"  tolerance ({a.cls}): min_cos >= {cos_tol}, argmax >= {agree_tol:.0%}, "
              f"rel <= {rel_tol:g}")
        bad = [c < cos_tol or ia != ib or d / ref_max > rel_tol
               for (d, m, c, ia, ib, margin) in stats]
        if a.verbose:
            shown = range(len(stats))
        else:  # every argmax disagreement, then the lowest cosines, 12 rows at most
            flips = [r for r, s in enumerate(stats) if s[3] != s[4]]
            worst = sorted((r for r in range(len(stats)) if bad[r] and r not in flips),
                           key=lambda r: stats[r][2])
            shown = sorted((flips + worst)[:12])
            print(f"  {sum(bad)} of {len(stats)} rows miss; shown: argmax flips, then lowest "
                  f"cosines (-v: all rows)")
        for r in shown:
            d, m, c, ia, ib, margin = stats[r]
            print(f"  row {r:4d}: max_abs={d:.3e} cos={c:.7f} argmax ref={ia} got={ib} "
                  f"ref top1-top2={margin:.4g}{'  <-' if bad[r] else ''}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
