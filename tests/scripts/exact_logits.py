#!/usr/bin/env python3
"""Exact logits of a Ministral 3 GGUF: the forward pass of ../shared/docs/ministral3.md in
float64, on weights dequantized by gguf-py (llama.cpp's reference reader), with no activation
quantization and no f16 KV cache. The third opinion when Spillway and llama.cpp disagree: it
tells which of the two is further from the model the file actually describes.

    python3 exact_logits.py MODEL.gguf IDS_FILE OUT.f32     (needs numpy and `pip install gguf`)

Same input and output as llamacpp_logits.c: whitespace-separated ids evaluated from position 0,
OUT.f32 = one row of n_vocab little-endian f32 per position. Tensors are dequantized one at a
time as the pass reaches them (a 3B model peaks near 2.5 GiB: the f32 embedding plus one
layer in float64), so it runs on the 3B shapes too, in a minute or two for 32 ids.
On the fixtures' tiny-f32.gguf it reproduces llama.cpp's golden logits to 3e-5 of the largest
logit (llama.cpp keeps K/V in f16, this does not).
"""
import math
import sys

import numpy as np
import gguf
from gguf.quants import dequantize


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    path, ids_path, out_path = sys.argv[1:]
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}

    def meta(key):
        return reader.fields[key].contents()

    def weight(name, dtype=np.float64):
        """Dequantized tensor as rows x cols (GGUF ne = [cols, rows])."""
        t = tensors[name]
        shape = [int(n) for n in reversed(t.shape)]
        return dequantize(t.data, t.tensor_type).astype(dtype).reshape(shape)

    arch = meta("general.architecture")
    hp = lambda k: meta(f"{arch}.{k}")  # noqa: E731
    n_layer, n_head = hp("block_count"), hp("attention.head_count")
    n_kv, head_dim = hp("attention.head_count_kv"), hp("attention.key_length")
    eps, base = hp("attention.layer_norm_rms_epsilon"), hp("rope.freq_base")
    n_ctx_orig = hp("rope.scaling.original_context_length")
    factor = hp("rope.scaling.factor")
    beta_fast, beta_slow = hp("rope.scaling.yarn_beta_fast"), hp("rope.scaling.yarn_beta_slow")
    temp_key = f"{arch}.attention.temperature_scale"
    temp_scale = meta(temp_key) if temp_key in reader.fields else 0.0

    ids = [int(x) for x in open(ids_path).read().split()]
    n_tok = len(ids)

    # YaRN rope tables (ggml NORM mode: adjacent pairs), per position and pair.
    n = head_dim
    corr_dim = lambda beta: n * math.log(n_ctx_orig / (beta * 2 * math.pi)) / (2 * math.log(base))  # noqa: E731
    low, high = max(0, math.floor(corr_dim(beta_fast))), min(n - 1, math.ceil(corr_dim(beta_slow)))
    pair = np.arange(n // 2)
    pos = np.arange(n_tok)[:, None]
    extrap = pos * base ** (-2.0 * pair / n)
    ramp = 1 - np.clip((pair - low) / max(0.001, high - low), 0, 1)
    theta = extrap / factor * (1 - ramp) + extrap * ramp
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]

    def rope(x):  # x: tokens x heads x head_dim
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out

    def rmsnorm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    temperature = 1 + temp_scale * np.log(1 + np.floor(np.arange(n_tok) / n_ctx_orig))
    causal = np.triu(np.full((n_tok, n_tok), -np.inf), 1)

    embd = weight("token_embd.weight", np.float32)
    x = embd[ids].astype(np.float64)
    for layer in range(n_layer):
        w = lambda k: weight(f"blk.{layer}.{k}.weight")  # noqa: E731
        h = rmsnorm(x, w("attn_norm"))
        q = (h @ w("attn_q").T).reshape(n_tok, n_head, head_dim)
        k = rope((h @ w("attn_k").T).reshape(n_tok, n_kv, head_dim))
        v = (h @ w("attn_v").T).reshape(n_tok, n_kv, head_dim)
        q = rope(q) * temperature[:, None, None]
        att = np.empty((n_tok, n_head, head_dim))
        for head in range(n_head):
            kv = head // (n_head // n_kv)
            s = q[:, head] @ k[:, kv].T / math.sqrt(head_dim) + causal
            s = np.exp(s - s.max(1, keepdims=True))
            att[:, head] = (s / s.sum(1, keepdims=True)) @ v[:, kv]
        x = x + att.reshape(n_tok, -1) @ w("attn_output").T
        h = rmsnorm(x, w("ffn_norm"))
        gate, up = h @ w("ffn_gate").T, h @ w("ffn_up").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w("ffn_down").T
    out_w = weight("output.weight", np.float32) if "output.weight" in tensors else embd
    h = rmsnorm(x, weight("output_norm.weight"))
    logits = np.concatenate([h @ out_w[r:r + 16384].T.astype(np.float64)
                             for r in range(0, out_w.shape[0], 16384)], axis=1)
    logits.astype("<f4").tofile(out_path)


if __name__ == "__main__":
    main()
