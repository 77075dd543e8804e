/*
 * llamacpp_logits.c: llama.cpp's logits for a list of token ids, as the reference for
 * `spillway logits` (see compare_llamacpp.sh, which builds and runs this).
 *
 *     llamacpp_logits MODEL.gguf IDS_FILE OUT.f32 [THREADS]
 *
 * IDS_FILE holds whitespace-separated token ids. They are evaluated as ONE batch (one
 * llama_decode call, one micro-batch) from position 0 of sequence 0, with logits requested for
 * every position. OUT.f32 receives n_tokens rows of n_vocab little-endian f32, row i being the
 * logits after token i: the same layout `spillway logits --out` writes.
 *
 * CPU only (no layers offloaded). The weights are read into memory (no mmap). The context is
 * sized to the prompt (not the model's 262144-token training context, whose KV cache would not
 * fit) and the KV cache keeps llama.cpp's default type (f16), like Spillway's default.
 * Everything else is llama.cpp's default for this version (flash attention "auto", CPU weight
 * repacking on), i.e. what a user of llama.cpp gets.
 *
 * Build against a llama.cpp build with shared libraries, e.g.
 *     gcc -O2 -std=c11 -Wall -Wextra -o llamacpp_logits llamacpp_logits.c \
 *         -I$LLAMA/include -I$LLAMA/ggml/include -L$BUILD/bin -lllama -lggml -lggml-base \
 *         -Wl,-rpath,$BUILD/bin
 * Written against llama.h of llama-cpp-python 0.3.36's vendored llama.cpp
 * (llama_model_load_from_file / llama_init_from_model / llama_vocab_n_tokens /
 * llama_get_logits_ith, llama_model_params.load_mode).
 *
 * Exit status: 0 on success, 1 on any error (message on stderr).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

/* llama.cpp logs every load step at INFO; keep warnings and errors only. */
static void quiet_log(enum ggml_log_level level, const char *text, void *user_data) {
    (void)user_data;
    if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

/* Read whitespace-separated non-negative integers. Returns a malloc'd array, count in *n. */
static llama_token *read_ids(const char *path, int32_t *n) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "llamacpp_logits: cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 64, len = 0;
    llama_token *ids = malloc(cap * sizeof *ids);
    long v;
    int r;
    while (ids && (r = fscanf(f, "%ld", &v)) == 1) {
        if (v < 0 || v > INT32_MAX) {
            fprintf(stderr, "llamacpp_logits: %s: id %ld out of range\n", path, v);
            free(ids);
            ids = NULL;
            break;
        }
        if (len == cap) {
            cap *= 2;
            llama_token *grown = realloc(ids, cap * sizeof *ids);
            if (!grown) {
                free(ids);
                ids = NULL;
                break;
            }
            ids = grown;
        }
        ids[len++] = (llama_token)v;
    }
    if (ids && !feof(f)) { /* fscanf stopped on something that is not a number */
        fprintf(stderr, "llamacpp_logits: %s: not a whitespace-separated list of ids\n", path);
        free(ids);
        ids = NULL;
    }
    fclose(f);
    if (ids && len == 0) {
        fprintf(stderr, "llamacpp_logits: %s holds no ids\n", path);
        free(ids);
        ids = NULL;
    }
    *n = (int32_t)len;
    return ids;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s MODEL.gguf IDS_FILE OUT.f32 [THREADS]\n", argv[0]);
        return 1;
    }
    const char *model_path = argv[1], *ids_path = argv[2], *out_path = argv[3];
    int threads = argc == 5 ? atoi(argv[4]) : 2;
    if (threads < 1) {
        fprintf(stderr, "llamacpp_logits: bad thread count %s\n", argv[4]);
        return 1;
    }

    int32_t n_tokens = 0;
    llama_token *ids = read_ids(ids_path, &n_tokens);
    if (!ids) {
        return 1;
    }

    llama_log_set(quiet_log, NULL);
    llama_backend_init();

    /* Model: every layer on the CPU, tensors read into RAM rather than memory-mapped. */
    struct llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    mparams.load_mode = LLAMA_LOAD_MODE_NONE;
    struct llama_model *model = llama_model_load_from_file(model_path, mparams);
    if (!model) {
        fprintf(stderr, "llamacpp_logits: cannot load %s\n", model_path);
        return 1;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    for (int32_t i = 0; i < n_tokens; i++) {
        if (ids[i] >= n_vocab) {
            fprintf(stderr, "llamacpp_logits: id %d at position %d >= n_vocab %d\n", ids[i], i,
                    n_vocab);
            return 1;
        }
    }

    /* Context: room for exactly this prompt, which goes in as one batch and one micro-batch
     * (n_batch = n_ubatch = n_tokens) so every position sees the same matrix-matrix path. */
    struct llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t)n_tokens;
    cparams.n_batch = (uint32_t)n_tokens;
    cparams.n_ubatch = (uint32_t)n_tokens;
    cparams.n_seq_max = 1;
    cparams.n_threads = threads;
    cparams.n_threads_batch = threads;
    cparams.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        fprintf(stderr, "llamacpp_logits: cannot create a context for %d tokens\n", n_tokens);
        return 1;
    }

    /* The batch: token i at position i of sequence 0, logits wanted for every token. */
    struct llama_batch batch = llama_batch_init(n_tokens, 0, 1);
    for (int32_t i = 0; i < n_tokens; i++) {
        batch.token[i] = ids[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n_tokens;
    int32_t rc = llama_decode(ctx, batch);
    if (rc != 0) {
        fprintf(stderr, "llamacpp_logits: llama_decode failed (%d)\n", rc);
        return 1;
    }

    /* Row i of the output is llama_get_logits_ith(ctx, i): logits after token i. */
    FILE *out = fopen(out_path, "wb");
    if (!out) {
        fprintf(stderr, "llamacpp_logits: cannot create %s: %s\n", out_path, strerror(errno));
        return 1;
    }
    const uint16_t probe = 1; /* the f32 rows are written in host order: insist on LE */
    if (*(const uint8_t *)&probe != 1) {
        fprintf(stderr, "llamacpp_logits: big-endian hosts are not supported\n");
        return 1;
    }
    for (int32_t i = 0; i < n_tokens; i++) {
        const float *row = llama_get_logits_ith(ctx, i);
        if (!row) {
            fprintf(stderr, "llamacpp_logits: no logits for position %d\n", i);
            return 1;
        }
        if (fwrite(row, sizeof(float), (size_t)n_vocab, out) != (size_t)n_vocab) {
            fprintf(stderr, "llamacpp_logits: write to %s failed\n", out_path);
            return 1;
        }
    }
    if (fclose(out) != 0) {
        fprintf(stderr, "llamacpp_logits: write to %s failed\n", out_path);
        return 1;
    }
    fprintf(stderr, "llamacpp_logits: %d positions x %d logits -> %s\n", n_tokens, n_vocab,
            out_path);

    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    free(ids);
    return 0;
}
