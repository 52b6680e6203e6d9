/* The GGUF parser and llama loader refuse malformed files (truncations, lying lengths, huge
 * counts, nested arrays, bad types, out-of-bounds / overlapping / misaligned tensors, wrong
 * shapes, out-of-range token ids) with an error naming the file and the fault, without reading
 * out of bounds or allocating from unchecked counts (the ASan build runs this). Files are built
 * here byte by byte from the GGUF spec. */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats_testutil.h"
#include "gguf.h"
#include "load_gguf.h"

struct buf { uint8_t *p; size_t n, cap; };

static void put(struct buf *b, const void *data, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}
static void put_u8(struct buf *b, uint8_t v) { put(b, &v, 1); }
static void put_u32(struct buf *b, uint32_t v) { for (int i = 0; i < 4; i++) put_u8(b, (uint8_t)(v >> (8 * i))); }
static void put_u64(struct buf *b, uint64_t v) { for (int i = 0; i < 8; i++) put_u8(b, (uint8_t)(v >> (8 * i))); }
static void put_str_len(struct buf *b, const char *s, uint64_t len_field) { put_u64(b, len_field); put(b, s, strlen(s)); }
static void put_str(struct buf *b, const char *s) { put_str_len(b, s, strlen(s)); }
static void put_f32(struct buf *b, float f) { uint32_t u; memcpy(&u, &f, 4); put_u32(b, u); }

/* Knobs that break one thing in an otherwise valid llama GGUF (dim 32, hidden 32, 1 layer,
 * 2 heads, 1 kv head, vocab 8, all F32). Zero means "the valid value". */
struct spec {
    const char *magic, *arch, *victim;
    uint32_t version, alignment, victim_type, victim_ndims;
    uint64_t n_tensors, n_kv, key_len, arch_len, tokens_len, victim_ne0, victim_offset;
    int64_t bos;
    int n_scores, nested_array, bad_value_type, bool_value, dup_key, omit_victim, overlap;
};

static const struct { const char *name; uint64_t cols, rows; } tensors[] = {
    {"token_embd.weight", 32, 8}, {"output_norm.weight", 32, 0}, {"blk.0.attn_norm.weight", 32, 0},
    {"blk.0.attn_q.weight", 32, 32}, {"blk.0.attn_k.weight", 32, 16}, {"blk.0.attn_v.weight", 32, 16},
    {"blk.0.attn_output.weight", 32, 32}, {"blk.0.ffn_norm.weight", 32, 0}, {"blk.0.ffn_gate.weight", 32, 32},
    {"blk.0.ffn_up.weight", 32, 32}, {"blk.0.ffn_down.weight", 32, 32},
};
#define N_TENSORS (sizeof tensors / sizeof tensors[0])

static uint64_t type_bytes(uint32_t type, uint64_t n) {
    switch (type) {
    case 0: return 4 * n;
    case 1: case 30: return 2 * n;
    case 2: return n / 32 * 18;
    case 6: return n / 32 * 22;
    case 8: return n / 32 * 34;
    }
    return 4 * n;
}

static struct buf build(struct spec s) {
    struct buf b = {0};
    uint32_t align = s.alignment ? s.alignment : 32;
    put(&b, s.magic ? s.magic : "GGUF", 4);
    put_u32(&b, s.version ? s.version : 3);
    int n_kv = 12 + (s.nested_array ? 1 : 0) + (s.bad_value_type ? 1 : 0) + (s.dup_key ? 1 : 0) + (s.alignment ? 1 : 0);
    size_t n_t = N_TENSORS - (s.omit_victim ? 1 : 0);
    put_u64(&b, s.n_tensors ? s.n_tensors : n_t);
    put_u64(&b, s.n_kv ? s.n_kv : (uint64_t)n_kv);
    const char *arch = s.arch ? s.arch : "llama";
    put_str_len(&b, "general.architecture", s.key_len ? s.key_len : 20);
    put_u32(&b, LORAD_GGUF_STRING);
    put_str_len(&b, arch, s.arch_len ? s.arch_len : strlen(arch));
    if (s.alignment) { put_str(&b, "general.alignment"); put_u32(&b, LORAD_GGUF_U32); put_u32(&b, s.alignment); }
    static const struct { const char *k; uint32_t v; } ints[] = {
        {"llama.context_length", 64}, {"llama.embedding_length", 32}, {"llama.block_count", 1},
        {"llama.feed_forward_length", 32}, {"llama.attention.head_count", 2}, {"llama.attention.head_count_kv", 1},
    };
    for (size_t i = 0; i < 6; i++) { put_str(&b, ints[i].k); put_u32(&b, LORAD_GGUF_U32); put_u32(&b, ints[i].v); }
    put_str(&b, "llama.attention.layer_norm_rms_epsilon"); put_u32(&b, LORAD_GGUF_F32); put_f32(&b, 1e-5f);
    put_str(&b, "tokenizer.ggml.tokens"); put_u32(&b, LORAD_GGUF_ARRAY); put_u32(&b, LORAD_GGUF_STRING);
    put_u64(&b, s.tokens_len ? s.tokens_len : 8);
    for (int i = 0; i < 8; i++) { char t[8]; snprintf(t, sizeof t, "t%d", i); put_str(&b, t); }
    int n_scores = s.n_scores ? s.n_scores : 8;
    put_str(&b, "tokenizer.ggml.scores"); put_u32(&b, LORAD_GGUF_ARRAY); put_u32(&b, LORAD_GGUF_F32); put_u64(&b, (uint64_t)n_scores);
    for (int i = 0; i < n_scores; i++) put_f32(&b, (float)-i);
    put_str(&b, "tokenizer.ggml.bos_token_id"); put_u32(&b, LORAD_GGUF_I32); put_u32(&b, (uint32_t)(s.bos ? s.bos : 1));
    put_str(&b, "tokenizer.ggml.add_bos_token"); put_u32(&b, LORAD_GGUF_BOOL); put_u8(&b, (uint8_t)(s.bool_value ? s.bool_value : 1));
    if (s.nested_array) {
        put_str(&b, "x.nested"); put_u32(&b, LORAD_GGUF_ARRAY); put_u32(&b, LORAD_GGUF_ARRAY); put_u64(&b, 1);
        put_u32(&b, LORAD_GGUF_U8); put_u64(&b, 1); put_u8(&b, 0);
    }
    if (s.bad_value_type) { put_str(&b, "x.bad"); put_u32(&b, 99); put_u32(&b, 0); }
    if (s.dup_key) { put_str(&b, "llama.block_count"); put_u32(&b, LORAD_GGUF_U32); put_u32(&b, 1); }
    uint64_t offset = 0, prev = 0;
    for (size_t i = 0; i < N_TENSORS; i++) {
        int hit = s.victim && strcmp(s.victim, tensors[i].name) == 0;
        if (hit && s.omit_victim) continue;
        uint32_t type = hit && s.victim_type ? s.victim_type : 0, nd = tensors[i].rows ? 2 : 1;
        if (hit && s.victim_ndims) nd = s.victim_ndims;
        uint64_t ne0 = hit && s.victim_ne0 ? s.victim_ne0 : tensors[i].cols;
        uint64_t ne[4] = {ne0, tensors[i].rows ? tensors[i].rows : 1, 1, 1};
        uint64_t n = ne[0] * ne[1];
        put_str(&b, tensors[i].name);
        put_u32(&b, nd);
        for (uint32_t d = 0; d < nd; d++) put_u64(&b, d < 4 ? ne[d] : 1);
        put_u32(&b, type);
        uint64_t off = hit && s.victim_offset ? s.victim_offset : (hit && s.overlap ? prev : offset);
        put_u64(&b, off);
        prev = offset;
        offset += (type_bytes(type, n) + align - 1) / align * align;
    }
    while (b.n % align) put_u8(&b, 0);
    static const uint8_t zeros[4096];
    for (uint64_t left = offset; left > 0;) {
        size_t k = left > sizeof zeros ? sizeof zeros : (size_t)left;
        put(&b, zeros, k);
        left -= k;
    }
    return b;
}

static char *dir;

static int setup(void **state) {
    (void)state;
    dir = test_mkdtemp("gguf");
    return 0;
}

static int teardown(void **state) {
    (void)state;
    test_rmtree(dir);
    free(dir);
    return 0;
}

static char *write_spec(const char *name, struct spec s) {
    struct buf b = build(s);
    char *path = test_path(dir, name);
    test_write_file(path, b.p, b.n);
    free(b.p);
    return path;
}

static void test_valid_file_loads(void **state) {
    (void)state;
    char *path = write_spec("ok.gguf", (struct spec){0});
    struct lorad_base_weights w = {0};
    struct lorad_vocab_arrays v;
    struct lorad_error err = {0};
    if (lorad_load_gguf(path, LORAD_LOAD_WEIGHTS, &w, &v, &err) < 0) fail_msg("%s", err.message);
    assert_int_equal(w.cfg.dim, 32);
    assert_int_equal(w.cfg.n_kv_heads, 1);
    assert_int_equal(w.cfg.head_dim, 16);
    assert_int_equal(w.cfg.vocab_size, 8);
    assert_true(w.cfg.tie_embeddings); /* no output.weight */
    assert_true(w.lm_head.data == w.embed.data);
    assert_int_equal(v.n_tokens, 8);
    assert_string_equal(v.tokens[7], "t7");
    assert_int_equal(v.bos_id, 1);
    assert_int_equal(v.eos_id, -1);
    assert_int_equal(v.add_bos, 1);
    assert_null(v.merges);
    lorad_base_weights_release(&w);
    free(path);
}

static void expect_bad(const char *name, struct spec s, const char *fault) {
    char *path = write_spec(name, s);
    struct lorad_base_weights w = {0};
    struct lorad_vocab_arrays v = {.n_tokens = 4242};
    struct lorad_error err = {0};
    int r = lorad_load_gguf(path, LORAD_LOAD_WEIGHTS, &w, &v, &err);
    if (r != -EINVAL) fail_msg("%s: expected -EINVAL, got %d: %s", name, r, err.message);
    assert_null(w.owner);
    assert_int_equal(v.n_tokens, 4242);
    if (!strstr(err.message, path)) fail_msg("%s: error does not name the file: %s", name, err.message);
    if (!strstr(err.message, fault)) fail_msg("%s: expected \"%s\" in: %s", name, fault, err.message);
    free(path);
}

static void test_malformed_files_are_refused(void **state) {
    (void)state;
    expect_bad("magic.gguf", (struct spec){.magic = "GGUX"}, "wrong magic");
    expect_bad("v1.gguf", (struct spec){.version = 1}, "version 1");
    expect_bad("v4.gguf", (struct spec){.version = 4}, "version 4");
    expect_bad("v2.gguf", (struct spec){.version = 2, .arch = "gpt2"}, "gpt2"); /* v2 parses */
    expect_bad("tensor_count.gguf", (struct spec){.n_tensors = (uint64_t)1 << 60}, "tensors cannot fit");
    expect_bad("kv_count.gguf", (struct spec){.n_kv = (uint64_t)1 << 60}, "metadata entries cannot fit");
    expect_bad("key_len.gguf", (struct spec){.key_len = (uint64_t)1 << 62}, "lying length");
    expect_bad("string_len.gguf", (struct spec){.arch_len = (uint64_t)1 << 62}, "lying length");
    expect_bad("array_len.gguf", (struct spec){.tokens_len = (uint64_t)1 << 61}, "lying length");
    expect_bad("array_len2.gguf", (struct spec){.tokens_len = 9}, "");
    expect_bad("nested.gguf", (struct spec){.nested_array = 1}, "nested arrays");
    expect_bad("value_type.gguf", (struct spec){.bad_value_type = 1}, "unknown value type 99");
    expect_bad("bool.gguf", (struct spec){.bool_value = 2}, "not 0 or 1");
    expect_bad("dup.gguf", (struct spec){.dup_key = 1}, "duplicate key llama.block_count");
    expect_bad("align.gguf", (struct spec){.alignment = 48}, "power of two");
    expect_bad("arch.gguf", (struct spec){.arch = "gpt2"}, "architecture \"gpt2\"");
    expect_bad("ttype.gguf", (struct spec){.victim = "blk.0.attn_v.weight", .victim_type = 99}, "unknown tensor type 99");
    expect_bad("q4k.gguf", (struct spec){.victim = "blk.0.attn_v.weight", .victim_type = 12}, "multiple of the block size");
    expect_bad("q5_0.gguf", (struct spec){.victim = "blk.0.attn_v.weight", .victim_type = 6}, "type Q5_0");
    expect_bad("oob.gguf", (struct spec){.victim = "blk.0.ffn_down.weight", .victim_offset = (uint64_t)1 << 40},
               "outside the");
    expect_bad("oob2.gguf", (struct spec){.victim = "blk.0.ffn_down.weight", .victim_offset = UINT64_MAX - 31}, "outside the");
    expect_bad("overlap.gguf", (struct spec){.victim = "blk.0.attn_k.weight", .overlap = 1}, "overlaps");
    expect_bad("misaligned.gguf", (struct spec){.victim = "blk.0.attn_k.weight", .victim_offset = 4}, "not aligned");
    expect_bad("ndims.gguf", (struct spec){.victim = "blk.0.attn_k.weight", .victim_ndims = 5}, "n_dims");
    expect_bad("shape.gguf", (struct spec){.victim = "blk.0.attn_k.weight", .victim_ne0 = 64},
               "blk.0.attn_k.weight has ne [64, 16");
    expect_bad("vec_shape.gguf", (struct spec){.victim = "blk.0.ffn_norm.weight", .victim_ndims = 2}, "blk.0.ffn_norm.weight has ne");
    expect_bad("missing.gguf", (struct spec){.victim = "blk.0.ffn_up.weight", .omit_victim = 1},
               "missing tensor blk.0.ffn_up.weight");
    expect_bad("bos.gguf", (struct spec){.bos = 8}, "tokenizer.ggml.bos_token_id = 8 is outside the vocabulary of 8");
    expect_bad("bos_neg.gguf", (struct spec){.bos = -1}, "bos_token_id = -1");
    expect_bad("scores.gguf", (struct spec){.n_scores = 5}, "tokenizer.ggml.scores has 5 entries");
}

static void test_every_truncation_is_refused(void **state) {
    (void)state;
    struct buf b = build((struct spec){0});
    char *path = test_path(dir, "cut.gguf");
    test_write_file(path, b.p, b.n);
    struct lorad_gguf *full;
    struct lorad_error ferr = {0};
    assert_int_equal(lorad_gguf_open(path, &full, &ferr), 0);
    size_t data_start = (size_t)full->data_offset;
    lorad_gguf_close(full);
    /* Every cut inside the metadata; a sample of cuts inside the tensor data, and the last byte. */
    for (size_t n = 0; n < b.n; n = n < data_start ? n + 1 : (n + 61 < b.n - 1 ? n + 61 : n == b.n - 1 ? b.n : b.n - 1)) {
        test_write_file(path, b.p, n);
        struct lorad_gguf *g = NULL;
        struct lorad_error err = {0};
        int r = lorad_gguf_open(path, &g, &err);
        if (r == 0) fail_msg("truncation to %zu of %zu bytes was accepted", n, b.n);
        assert_non_null(strstr(err.message, path));
    }
    free(path);
    free(b.p);
}

/* Seeded random corruption of header and metadata bytes: every outcome must be a clean success
 * or a clean error (ASan and UBSan watch the reads). */
static void test_random_corruptions_fail_cleanly(void **state) {
    (void)state;
    struct buf b = build((struct spec){0});
    char *path = test_path(dir, "fuzz.gguf");
    uint8_t *copy = malloc(b.n);
    uint32_t seed = 12345;
    int failures = 0;
    for (int iter = 0; iter < 1500; iter++) {
        memcpy(copy, b.p, b.n);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % 1200; /* header, KVs and tensor infos live in the first ~1 KB */
            seed = seed * 1103515245u + 12345u;
            copy[at] ^= (uint8_t)(1u << ((seed >> 16) % 8));
        }
        test_write_file(path, copy, b.n);
        struct lorad_base_weights w = {0};
        struct lorad_vocab_arrays v;
        struct lorad_error err = {0};
        int r = lorad_load_gguf(path, LORAD_LOAD_WEIGHTS, &w, &v, &err);
        if (r < 0) {
            failures++;
            assert_non_null(strstr(err.message, path));
            assert_null(w.owner);
        } else {
            assert_int_equal(lorad_base_weights_validate(&w, &err), 0);
            lorad_base_weights_release(&w);
        }
    }
    assert_true(failures > 100); /* the corruption does hit structure */
    free(copy);
    free(path);
    free(b.p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_file_loads),
        cmocka_unit_test(test_malformed_files_are_refused),
        cmocka_unit_test(test_every_truncation_is_refused),
        cmocka_unit_test(test_random_corruptions_fail_cleanly),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
