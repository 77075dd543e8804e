#!/usr/bin/env python3
"""Dump a GGUF file with gguf-py (llama.cpp's reference reader) in the shape of
`spillway inspect --json`, so the two readings can be compared.

Usage: gguf_py_dump.py FILE   (needs `pip install gguf`)
"""
import json
import sys

import gguf
import numpy as np

ARRAY_LIMIT = 64


def scalar(v):
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8")
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v)
    return v


def field_value(field):
    kind = field.types[0]
    if kind != gguf.GGUFValueType.ARRAY:
        return scalar(field.contents())
    elem = field.types[1] if len(field.types) > 1 else gguf.GGUFValueType.UINT8
    n = len(field.data)
    if n > ARRAY_LIMIT:
        return {"array": elem.name, "len": n}
    return [scalar(v) for v in field.contents()]


def main(path):
    r = gguf.GGUFReader(path)
    metadata = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        metadata[key] = field_value(field)
    tensors = [
        {
            "name": t.name,
            "type": t.tensor_type.name,
            "shape": [int(d) for d in t.shape],
            "offset": int(t.data_offset),
            "bytes": int(t.n_bytes),
        }
        for t in r.tensors
    ]
    out = {
        "version": int(r.fields["GGUF.version"].parts[-1][0]),
        "alignment": int(r.alignment),
        "metadata": metadata,
        "tensors": tensors,
    }
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1])
