/* Loading adapters back: PEFT and GGUF files written by lorad's writers load to bitwise identical
 * f32 tensors (GGUF q/k rows moved back to HF order); BF16/F16 PEFT tensors convert exactly; every
 * validation failure names the file, the tensor and expected vs got; an adapter.tar loads as its
 * directory does and damaged archives name the archive and the problem. The merge kernel is checked
 * against its plain-loop reference here; against PEFT semantics in export_cli.py. */
#include "testutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter_read.h"
#include "merge.h"
#include "safetensors_write.h"
#include "tar.h"
#include "weights.h"

#define N_LAYERS 2
#define MAX_T (2 * (7 * N_LAYERS + 1))

/* A GQA base whose head_dim differs from dim / n_heads, so every in/out size is distinct. */
static struct lorad_llama_config test_config(void) {
    struct lorad_llama_config c;
    lorad_llama_config_defaults(&c);
    c.dim = 36; c.hidden_dim = 52; c.n_layers = N_LAYERS; c.n_heads = 6; c.n_kv_heads = 2; c.head_dim = 8;
    c.vocab_size = 50; c.max_seq_len = 64;
    return c;
}

struct adapter_fixture {
    struct lorad_adapter_tensor t[MAX_T + 4]; /* room for the extra tensors of the failure cases */
    float *buf[MAX_T + 4];
    int n;
};

static const char *const module_names[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                           "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

static void add(struct adapter_fixture *f, const char *name, int64_t rows, int64_t cols, unsigned *seed) {
    struct lorad_adapter_tensor *t = &f->t[f->n];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->rows = rows;
    t->cols = cols;
    f->buf[f->n] = malloc((size_t)(rows * cols) * sizeof(float));
    for (int64_t i = 0; i < rows * cols; i++) f->buf[f->n][i] = (float)rand_r(seed) / RAND_MAX * 2.0f - 1.0f;
    t->data = f->buf[f->n];
    f->n++;
}

/* All seven projections of every layer plus lm_head, with rank r. */
static void make_adapter(struct adapter_fixture *f, const struct lorad_llama_config *c, int r) {
    unsigned seed = 42;
    f->n = 0;
    int64_t d = c->dim, q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim, h = c->hidden_dim;
    const int64_t in[] = {d, d, d, q, d, d, h}, out[] = {q, kv, kv, d, h, h, d};
    char name[128];
    for (int l = 0; l < c->n_layers; l++)
        for (int m = 0; m < 7; m++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.lora_A.weight", l, module_names[m]);
            add(f, name, r, in[m], &seed);
            snprintf(name, sizeof name, "model.layers.%d.%s.lora_B.weight", l, module_names[m]);
            add(f, name, out[m], r, &seed);
        }
    add(f, "lm_head.lora_A.weight", r, d, &seed);
    add(f, "lm_head.lora_B.weight", c->vocab_size, r, &seed);
}

static void free_adapter(struct adapter_fixture *f) {
    for (int i = 0; i < f->n; i++) free(f->buf[i]);
    f->n = 0;
}

static struct lorad_adapter_meta test_meta(int r, double alpha, bool rslora) {
    struct lorad_adapter_meta m = {.r = r, .alpha = alpha, .use_rslora = rslora, .n_targets = 1};
    strcpy(m.targets[0], "q_proj");
    return m;
}

static void assert_same_tensors(const struct lorad_adapter *a, const struct adapter_fixture *f) {
    assert_int_equal(a->n_tensors, f->n);
    for (int i = 0; i < f->n; i++) {
        const struct lorad_adapter_tensor *t = lorad_adapter_find(a, f->t[i].name);
        assert_non_null(t);
        assert_int_equal(t->rows, f->t[i].rows);
        assert_int_equal(t->cols, f->t[i].cols);
        assert_memory_equal(t->data, f->t[i].data, (size_t)(t->rows * t->cols) * sizeof(float));
    }
}

static void test_peft_round_trip(void **state) {
    (void)state;
    struct lorad_llama_config c = test_config();
    struct adapter_fixture f;
    make_adapter(&f, &c, 4);
    char *dir = test_mkdtemp("adapter-load");
    struct lorad_adapter_meta meta = test_meta(4, 8, false);
    struct lorad_error err = {0};
    assert_int_equal(lorad_adapter_write_peft(dir, &meta, f.t, f.n, &err), 0);
    struct lorad_adapter *a = NULL;
    assert_int_equal(lorad_adapter_load(dir, &c, &a, &err), 0);
    assert_same_tensors(a, &f);
    assert_int_equal(a->meta.r, 4);
    assert_float_equal(a->meta.alpha, 8, 0);
    const struct lorad_adapter_tensor *A, *B;
    assert_int_equal(lorad_adapter_module(a, "model.layers.1.mlp.down_proj", &A, &B), 0);
    assert_int_equal(A->cols, c.hidden_dim);
    assert_int_equal(B->rows, c.dim);
    assert_int_equal(lorad_adapter_module(a, "model.layers.2.mlp.down_proj", &A, &B), -ENOENT);
    lorad_adapter_free(a);
    /* Without a base config only the structure is checked. */
    assert_int_equal(lorad_adapter_load(dir, NULL, &a, &err), 0);
    assert_same_tensors(a, &f);
    lorad_adapter_free(a);
    /* ... but the rank and lorad's layer limit still are. */
    assert_int_equal(lorad_adapter_validate(f.t, f.n, 5, NULL, "x", &err), -EINVAL);
    assert_non_null(strstr(err.message, "x: tensor model.layers.0.self_attn.q_proj.lora_A.weight has shape (4, 36), expected (5, 36)"));
    snprintf(f.t[0].name, sizeof f.t[0].name, "model.layers.%d.self_attn.q_proj.lora_A.weight", LORAD_MAX_LAYERS);
    assert_int_equal(lorad_adapter_validate(f.t, f.n, 4, NULL, "x", &err), -EINVAL);
    assert_non_null(strstr(err.message, "beyond lorad's limit"));
    free_adapter(&f);
    test_rmtree(dir);
    free(dir);
}

static void gguf_round_trip(bool rslora) {
    struct lorad_llama_config c = test_config();
    struct adapter_fixture f;
    make_adapter(&f, &c, 3);
    char *dir = test_mkdtemp("adapter-load");
    char *path = test_path(dir, "adapter.gguf");
    struct lorad_adapter_meta meta = test_meta(3, 5, rslora);
    struct lorad_error err = {0};
    assert_int_equal(lorad_adapter_write_gguf(path, &meta, f.t, f.n, &c, &err), 0);
    struct lorad_adapter *a = NULL;
    assert_int_equal(lorad_adapter_load(path, &c, &a, &err), 0);
    assert_same_tensors(a, &f);
    assert_int_equal(a->meta.r, 3);
    /* llama.cpp applies alpha / r; rsLoRA's alpha / sqrt(r) survives as the same scale. */
    assert_float_equal(lorad_adapter_scale(&a->meta), rslora ? 5 / sqrt(3) : 5.0 / 3, 1e-6);
    assert_int_equal(a->meta.n_targets, 8);
    assert_string_equal(a->meta.targets[7], "lm_head");
    lorad_adapter_free(a);
    /* The RoPE rows need head_dim: a GGUF adapter cannot be read without the base config. */
    assert_int_equal(lorad_adapter_load(path, NULL, &a, &err), -EINVAL);
    assert_string_equal(err.param, "model");
    /* A base with another shape is refused, naming the tensor. */
    struct lorad_llama_config other = c;
    other.hidden_dim = 60;
    assert_int_equal(lorad_adapter_load(path, &other, &a, &err), -EINVAL);
    assert_non_null(strstr(err.message, "adapter.gguf"));
    assert_non_null(strstr(err.message, "mlp.gate_proj.lora_B.weight has shape (52, 3), expected (60, 3)"));
    free_adapter(&f);
    free(path);
    test_rmtree(dir);
    free(dir);
}
static void test_gguf_round_trip(void **state) { (void)state; gguf_round_trip(false); }
static void test_gguf_round_trip_rslora(void **state) { (void)state; gguf_round_trip(true); }

/* Writes f as a PEFT dir, optionally dropping tensor `drop` and renaming/reshaping one, then
 * expects lorad_adapter_load to fail with a message containing each of want[]. */
static void expect_failure(const struct adapter_fixture *f, int r_config, const char *const want[]) {
    struct lorad_llama_config c = test_config();
    char *dir = test_mkdtemp("adapter-load");
    struct lorad_adapter_meta meta = test_meta(r_config, 8, false);
    struct lorad_error err = {0};
    assert_int_equal(lorad_adapter_write_peft(dir, &meta, f->t, f->n, &err), 0);
    struct lorad_adapter *a = (struct lorad_adapter *)0x1;
    assert_int_equal(lorad_adapter_load(dir, &c, &a, &err), -EINVAL);
    assert_ptr_equal(a, (struct lorad_adapter *)0x1); /* untouched on failure */
    assert_non_null(strstr(err.message, "adapter_model.safetensors"));
    for (int i = 0; want[i]; i++) {
        if (!strstr(err.message, want[i])) fail_msg("message \"%s\" lacks \"%s\"", err.message, want[i]);
    }
    test_rmtree(dir);
    free(dir);
}

static void test_validation_failures(void **state) {
    (void)state;
    struct lorad_llama_config c = test_config();
    struct adapter_fixture f;
    unsigned seed = 7;

    /* Rank 4 tensors under a config that says r = 3. */
    make_adapter(&f, &c, 4);
    expect_failure(&f, 3, (const char *const[]){"model.layers.0.self_attn.q_proj.lora_A.weight",
                                                "has shape (4, 36), expected (3, 36)", "rank", NULL});
    free_adapter(&f);

    /* Wrong in-features of o_proj (in = n_heads * head_dim = 48, not dim). */
    make_adapter(&f, &c, 4);
    f.t[6].cols = 36; /* layer 0 o_proj lora_A */
    expect_failure(&f, 4, (const char *const[]){"model.layers.0.self_attn.o_proj.lora_A.weight",
                                                "has shape (4, 36), expected (4, 48)", NULL});
    /* Wrong out-features of k_proj (out = n_kv_heads * head_dim = 16). */
    f.t[6].cols = 48;
    f.t[3].rows = 12; /* layer 0 k_proj lora_B: the buffer is larger, so this stays in bounds */
    expect_failure(&f, 4, (const char *const[]){"model.layers.0.self_attn.k_proj.lora_B.weight",
                                                "has shape (12, 4), expected (16, 4)", NULL});
    f.t[3].rows = 16;
    /* lora_B missing for one module. */
    struct lorad_adapter_tensor saved = f.t[f.n - 1];
    f.n--;
    expect_failure(&f, 4, (const char *const[]){"lm_head has lm_head.lora_A.weight but no lm_head.lora_B.weight", NULL});
    f.t[f.n++] = saved;
    /* Unknown tensors: embeddings LoRA, modules_to_save copies, DoRA magnitudes, a typo. */
    const char *unknown[] = {"model.embed_tokens.lora_embedding_A", "lm_head.modules_to_save.default.weight",
                             "model.layers.0.self_attn.q_proj.lora_magnitude_vector.weight",
                             "model.layers.0.self_attn.qq_proj.lora_A.weight", "model.layers.01.mlp.up_proj.lora_A.weight"};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        char kept[128];
        memcpy(kept, f.t[0].name, sizeof kept);
        snprintf(f.t[0].name, sizeof f.t[0].name, "%s", unknown[i]);
        expect_failure(&f, 4, (const char *const[]){"unknown adapter tensor", unknown[i], NULL});
        memcpy(f.t[0].name, kept, sizeof kept);
    }
    /* A layer the base does not have. */
    char extra[128];
    add(&f, "model.layers.2.mlp.up_proj.lora_A.weight", 4, 36, &seed);
    expect_failure(&f, 4, (const char *const[]){"model.layers.2.mlp.up_proj.lora_A.weight", "layer 2 out of range",
                                                "2 layers", NULL});
    /* The same tensor twice (PEFT-prefixed and bare). */
    snprintf(extra, sizeof extra, "base_model.model.%s", f.t[0].name);
    snprintf(f.t[f.n - 1].name, sizeof f.t[0].name, "%s", extra);
    f.t[f.n - 1].cols = f.t[0].cols;
    {
        struct lorad_llama_config c2 = test_config();
        char *dir = test_mkdtemp("adapter-load");
        struct lorad_adapter_meta meta = test_meta(4, 8, false);
        struct lorad_error err = {0};
        /* The writer prefixes every name, so write this file by hand. */
        assert_int_equal(lorad_adapter_write_peft(dir, &meta, f.t, 1, &err), 0);
        char *st = test_path(dir, "adapter_model.safetensors");
        struct lorad_st_writer *w;
        assert_int_equal(lorad_st_writer_new(&w, st), 0);
        for (int i = 0; i < f.n; i++) {
            int64_t shape[2] = {f.t[i].rows, f.t[i].cols};
            assert_int_equal(lorad_st_writer_add(w, f.t[i].name, "F32", shape, 2, f.t[i].data,
                                                 (size_t)(shape[0] * shape[1]) * 4), 0);
        }
        assert_int_equal(lorad_st_writer_finish(w, &err), 0);
        struct lorad_adapter *a;
        assert_int_equal(lorad_adapter_load(dir, &c2, &a, &err), -EINVAL);
        assert_non_null(strstr(err.message, "model.layers.0.self_attn.q_proj.lora_A.weight appears twice"));
        free(st);
        test_rmtree(dir);
        free(dir);
    }
    free_adapter(&f);
}

/* Writes a PEFT dir whose safetensors holds q_proj of layer 0 in dtype (names unprefixed). */
static char *write_typed(const char *dtype, const void *a_data, const void *b_data, int elem) {
    char *dir = test_mkdtemp("adapter-load");
    struct lorad_adapter_meta meta = test_meta(2, 4, false);
    struct lorad_error err = {0};
    float dummy[2 * 36] = {0};
    struct lorad_adapter_tensor one = {.name = "model.layers.0.self_attn.q_proj.lora_A.weight", .data = dummy, .rows = 2, .cols = 36};
    assert_int_equal(lorad_adapter_write_peft(dir, &meta, &one, 1, &err), 0);
    char *st = test_path(dir, "adapter_model.safetensors");
    struct lorad_st_writer *w;
    assert_int_equal(lorad_st_writer_new(&w, st), 0);
    int64_t sa[2] = {2, 36}, sb[2] = {48, 2};
    assert_int_equal(lorad_st_writer_add(w, "model.layers.0.self_attn.q_proj.lora_A.weight", dtype, sa, 2, a_data, 72u * (unsigned)elem), 0);
    assert_int_equal(lorad_st_writer_add(w, "model.layers.0.self_attn.q_proj.lora_B.weight", dtype, sb, 2, b_data, 96u * (unsigned)elem), 0);
    assert_int_equal(lorad_st_writer_finish(w, &err), 0);
    free(st);
    return dir;
}

static void test_half_precision_and_bad_dtype(void **state) {
    (void)state;
    struct lorad_llama_config c = test_config();
    struct lorad_error err = {0};
    struct lorad_adapter *a;
    /* BF16 is the top half of an f32: bits 0x3FC0 are 1.5, 0xC020 are -2.5. */
    uint16_t a16[72], b16[96];
    for (int i = 0; i < 72; i++) a16[i] = i % 2 ? 0x3FC0 : 0xC020;
    for (int i = 0; i < 96; i++) b16[i] = 0x3FC0;
    char *dir = write_typed("BF16", a16, b16, 2);
    assert_int_equal(lorad_adapter_load(dir, &c, &a, &err), 0);
    const struct lorad_adapter_tensor *A, *B;
    assert_int_equal(lorad_adapter_module(a, "model.layers.0.self_attn.q_proj", &A, &B), 0);
    assert_float_equal(A->data[0], -2.5f, 0);
    assert_float_equal(A->data[1], 1.5f, 0);
    assert_float_equal(B->data[95], 1.5f, 0);
    lorad_adapter_free(a);
    test_rmtree(dir);
    free(dir);
    /* IEEE half: 0x3C00 is 1.0, 0xB800 is -0.5, 0x0001 the smallest subnormal 2^-24. */
    for (int i = 0; i < 72; i++) a16[i] = i % 3 == 0 ? 0x3C00 : i % 3 == 1 ? 0xB800 : 0x0001;
    dir = write_typed("F16", a16, b16, 2);
    assert_int_equal(lorad_adapter_load(dir, &c, &a, &err), 0);
    assert_int_equal(lorad_adapter_module(a, "model.layers.0.self_attn.q_proj", &A, &B), 0);
    assert_float_equal(A->data[0], 1.0f, 0);
    assert_float_equal(A->data[1], -0.5f, 0);
    assert_float_equal(A->data[2], ldexpf(1.0f, -24), 0);
    lorad_adapter_free(a);
    test_rmtree(dir);
    free(dir);
    /* Integer tensors are not LoRA weights. */
    int32_t ai[72] = {0}, bi[96] = {0};
    dir = write_typed("I32", ai, bi, 4);
    assert_int_equal(lorad_adapter_load(dir, &c, &a, &err), -EINVAL);
    assert_non_null(strstr(err.message, "adapter_model.safetensors"));
    assert_non_null(strstr(err.message, "q_proj.lora_A.weight has dtype I32, expected F32, BF16 or F16"));
    test_rmtree(dir);
    free(dir);
}

static void test_truncated_and_missing(void **state) {
    (void)state;
    struct lorad_llama_config c = test_config();
    struct adapter_fixture f;
    make_adapter(&f, &c, 4);
    char *dir = test_mkdtemp("adapter-load");
    struct lorad_adapter_meta meta = test_meta(4, 8, false);
    struct lorad_error err = {0};
    assert_int_equal(lorad_adapter_write_peft(dir, &meta, f.t, f.n, &err), 0);
    char *st = test_path(dir, "adapter_model.safetensors");
    FILE *fp = fopen(st, "r+");
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fclose(fp);
    assert_int_equal(truncate(st, size - 10), 0);
    struct lorad_adapter *a;
    assert_true(lorad_adapter_load(dir, &c, &a, &err) < 0);
    assert_non_null(strstr(err.message, st));
    unlink(st);
    assert_int_equal(lorad_adapter_load(dir, &c, &a, &err), -ENOENT);
    assert_non_null(strstr(err.message, "adapter_model.safetensors"));
    /* A file that is neither a directory nor GGUF. */
    char *cfg = test_path(dir, "adapter_config.json");
    assert_int_equal(lorad_adapter_load(cfg, &c, &a, &err), -EINVAL);
    assert_non_null(strstr(err.message, "adapter_config.json: not an adapter"));
    free(cfg);
    free(st);
    free_adapter(&f);
    test_rmtree(dir);
    free(dir);
}

/* Rewrites the first occurrence of from (same length as to) in the file at path. */
static void patch_file(const char *path, const char *from, const char *to) {
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, fp);
    char *at = memmem(buf, n, from, strlen(from));
    assert_non_null(at);
    fseek(fp, at - buf, SEEK_SET);
    fwrite(to, 1, strlen(to), fp);
    fclose(fp);
}

static void test_gguf_failures(void **state) {
    (void)state;
    struct lorad_llama_config c = test_config();
    struct adapter_fixture f;
    make_adapter(&f, &c, 2);
    char *dir = test_mkdtemp("adapter-load");
    char *path = test_path(dir, "adapter.gguf");
    struct lorad_adapter_meta meta = test_meta(2, 4, false);
    struct lorad_error err = {0};
    struct { const char *from, *to, *param, *message; } cases[] = {
        {"adapter.type", "adapter.typo", "adapter.type", "adapter.type must be \"lora\""},
        {"blk.0.attn_q.weight.lora_a", "blk.0.attn_z.weight.lora_a", "blk.0.attn_z.weight.lora_a",
         "unknown adapter tensor blk.0.attn_z.weight.lora_a"},
        {"blk.1.ffn_up.weight.lora_b", "blk.7.ffn_up.weight.lora_b", "model.layers.7.mlp.up_proj.lora_B.weight",
         "layer 7 out of range"},
        {"adapter.lora.alpha", "adapter.lora.alphx", "adapter.lora.alpha", "adapter.lora.alpha must be present"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(lorad_adapter_write_gguf(path, &meta, f.t, f.n, &c, &err), 0);
        patch_file(path, cases[i].from, cases[i].to);
        struct lorad_adapter *a;
        assert_int_equal(lorad_adapter_load(path, &c, &a, &err), -EINVAL);
        assert_string_equal(err.param, cases[i].param);
        assert_non_null(strstr(err.message, path));
        if (!strstr(err.message, cases[i].message)) fail_msg("\"%s\" lacks \"%s\"", err.message, cases[i].message);
    }
    free_adapter(&f);
    free(path);
    test_rmtree(dir);
    free(dir);
}

static void test_merge_kernel_matches_loops(void **state) {
    (void)state;
    const int64_t out = 37, in = 29, r = 5;
    float *w1 = malloc(out * in * sizeof(float)), *w2 = malloc(out * in * sizeof(float));
    float *A = malloc(r * in * sizeof(float)), *B = malloc(out * r * sizeof(float));
    unsigned seed = 3;
    for (int64_t i = 0; i < out * in; i++) w1[i] = w2[i] = (float)rand_r(&seed) / RAND_MAX - 0.5f;
    for (int64_t i = 0; i < r * in; i++) A[i] = (float)rand_r(&seed) / RAND_MAX - 0.5f;
    for (int64_t i = 0; i < out * r; i++) B[i] = (float)rand_r(&seed) / RAND_MAX - 0.5f;
    float *w0 = malloc(out * in * sizeof(float));
    memcpy(w0, w1, out * in * sizeof(float));
    lorad_merge_matrix(w1, B, A, 0.75f, out, in, r);
    lorad_merge_matrix_ref(w2, B, A, 0.75f, out, in, r);
    /* Each is w + 0.75 * (r products summed) in float32: within gamma_{r+2} = (r+2)u/(1-(r+2)u)
     * of |w| + 0.75 * sum |B||A| (Higham, sec. 3.1), so the two differ by at most twice that. */
    const double u = 0x1p-24, gamma = (r + 2) * u / (1 - (r + 2) * u);
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) {
            double mag = fabs(w0[o * in + i]);
            for (int64_t k = 0; k < r; k++) mag += 0.75 * fabs(B[o * r + k] * A[k * in + i]);
            if (!(fabs((double)w1[o * in + i] - w2[o * in + i]) <= 2 * gamma * mag))
                fail_msg("merge [%lld][%lld]: kernel %.9g, loop %.9g", (long long)o, (long long)i, w1[o * in + i],
                         w2[o * in + i]);
        }
    free(w0);
    /* One element by hand: w[o][i] grew by 0.75 * sum_k B[o][k] A[k][i]. */
    float before = (float)0, acc = 0;
    seed = 3;
    before = (float)rand_r(&seed) / RAND_MAX - 0.5f; /* w[0][0] */
    for (int64_t k = 0; k < r; k++) acc += B[k] * A[k * in];
    assert_float_equal(w2[0], before + 0.75f * acc, 1e-6);
    free(w1); free(w2); free(A); free(B);
}

/* Re-computes the checksum of the ustar header at tar[at] after a test edited it, so the damage
 * under test is the edited field, not the checksum. */
static void tar_reseal(unsigned char *tar, size_t at) {
    memset(tar + at + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += tar[at + i];
    snprintf((char *)tar + at + 148, 8, "%06o", sum);
}

/* Offset of the ustar header of the member whose name ends in name. */
static size_t tar_find(const unsigned char *tar, size_t len, const char *name) {
    for (size_t at = 0; at + 512 <= len; at += 512) {
        if (memcmp(tar + at + 257, "ustar", 5) != 0) continue;
        size_t n = strnlen((const char *)tar + at, 100), k = strlen(name);
        if (n >= k && memcmp(tar + at + n - k, name, k) == 0) return at;
    }
    fail_msg("no tar member %s", name);
    return 0;
}

/* Writes data to dir/name and expects lorad_adapter_load to fail with rc, err starting with the
 * archive's path and containing want. */
static void expect_bad_tar(const char *dir, const char *name, const void *data, size_t len, int rc, const char *want) {
    struct lorad_llama_config c = test_config();
    char *path = test_path(dir, name);
    test_write_file(path, data, len);
    struct lorad_adapter *a = NULL;
    struct lorad_error err = {0};
    assert_int_equal(lorad_adapter_load(path, &c, &a, &err), rc);
    assert_null(a);
    char prefix[4096];
    snprintf(prefix, sizeof prefix, "%s: ", path);
    if (strncmp(err.message, prefix, strlen(prefix)) != 0 || !strstr(err.message, want))
        fail_msg("error \"%s\" does not name %s or lacks \"%s\"", err.message, path, want);
    free(path);
}

/* An adapter.tar written by the engine's own tar writer (what the API serves) loads to the same
 * tensors and meta as its directory, without unpacking; each kind of damage fails naming the
 * archive and the problem. (GNU tar as producer: export_cli.py.) */
static void test_tar(void **state) {
    (void)state;
    struct lorad_llama_config c = test_config();
    struct adapter_fixture f;
    make_adapter(&f, &c, 4);
    char *dir = test_mkdtemp("adapter-load");
    char *peft = test_path(dir, "peft"), *tar = test_path(dir, "adapter.tar");
    struct lorad_adapter_meta meta = test_meta(4, 8, true);
    struct lorad_error err = {0};
    assert_int_equal(lorad_adapter_write_peft(peft, &meta, f.t, f.n, &err), 0);
    static const char *const both[] = {"adapter_config.json", "adapter_model.safetensors"};
    assert_int_equal(lorad_tar_write(tar, peft, both, 2, "adapter", &err), 0);
    struct lorad_adapter *a = NULL;
    assert_int_equal(lorad_adapter_load(tar, &c, &a, &err), 0);
    assert_same_tensors(a, &f);
    assert_string_equal(a->path, tar);
    assert_int_equal(a->meta.r, 4);
    assert_float_equal(a->meta.alpha, 8, 0);
    assert_true(a->meta.use_rslora);
    lorad_adapter_free(a);
    /* The directory's checks apply: a base with other sizes is refused, naming the member. */
    struct lorad_llama_config other = c;
    other.dim = 40;
    assert_int_equal(lorad_adapter_load(tar, &other, &a, &err), -EINVAL);
    char want[4096];
    snprintf(want, sizeof want, "%s: adapter_model.safetensors: tensor model.layers.0.self_attn.q_proj.lora_A.weight "
             "has shape (4, 36), expected (4, 40)", tar);
    if (!strstr(err.message, want)) fail_msg("error \"%s\" lacks \"%s\"", err.message, want);

    size_t len;
    unsigned char *raw = test_read_file(tar, &len);
    unsigned char *bad = malloc(len);
    size_t st_at = tar_find(raw, len, "adapter_model.safetensors");
    /* truncated inside a member, and cut before the end-of-archive blocks */
    expect_bad_tar(dir, "cut.tar", raw, st_at + 1024, -EINVAL, "truncated tar archive: member adapter/adapter_model.safetensors needs");
    expect_bad_tar(dir, "noend.tar", raw, len - 1024, -EINVAL, "truncated tar archive: no end-of-archive block");
    expect_bad_tar(dir, "half.tar", raw, 300, -EINVAL, "not an adapter");
    /* bad checksum; bad size field; a size beyond the member limit */
    memcpy(bad, raw, len);
    bad[st_at + 5] ^= 1;
    expect_bad_tar(dir, "sum.tar", bad, len, -EINVAL, "damaged tar header at byte");
    memcpy(bad, raw, len);
    memcpy(bad + st_at + 124, "00000001x00", 11);
    tar_reseal(bad, st_at);
    expect_bad_tar(dir, "size.tar", bad, len, -EINVAL, "has a bad size field");
    memcpy(bad, raw, len);
    memcpy(bad + st_at + 124, "777777777777", 12); /* 12 digits, no NUL: 64 GiB - 1 */
    tar_reseal(bad, st_at);
    expect_bad_tar(dir, "big.tar", bad, len, -EFBIG, "tar member adapter/adapter_model.safetensors is 68719476735 bytes, more than the");
    /* a member of ours that is not a regular file */
    memcpy(bad, raw, len);
    bad[st_at + 156] = '2';
    tar_reseal(bad, st_at);
    expect_bad_tar(dir, "link.tar", bad, len, -EINVAL, "tar member adapter/adapter_model.safetensors has type '2', expected a regular file");
    /* the safetensors member turned into a pax header: its data is not "LEN KEY=VALUE\n" records */
    memcpy(bad, raw, len);
    bad[st_at + 156] = 'x';
    tar_reseal(bad, st_at);
    snprintf(want, sizeof want, "malformed pax extended header at byte %zu: record at byte %zu: bad length field", st_at,
             st_at + 512);
    expect_bad_tar(dir, "pax.tar", bad, len, -EINVAL, want);
    /* damage inside a member is reported by its own parser, under the archive's name */
    memcpy(bad, raw, len);
    bad[st_at + 512 + 8] = 'x';
    expect_bad_tar(dir, "stbad.tar", bad, len, -EINVAL, "adapter_model.safetensors: invalid safetensors file: header does not start with '{'");
    free(bad);
    free(raw);
    /* a missing member; the same member twice */
    static const char *const cfg_only[] = {"adapter_config.json"};
    assert_int_equal(lorad_tar_write(tar, peft, cfg_only, 1, "adapter", &err), 0);
    raw = test_read_file(tar, &len);
    expect_bad_tar(dir, "missing.tar", raw, len, -EINVAL, "the tar holds no adapter_model.safetensors");
    free(raw);
    static const char *const twice[] = {"adapter_config.json", "adapter_model.safetensors", "adapter_config.json"};
    assert_int_equal(lorad_tar_write(tar, peft, twice, 3, "adapter", &err), 0);
    raw = test_read_file(tar, &len);
    expect_bad_tar(dir, "twice.tar", raw, len, -EINVAL, "the tar holds adapter_config.json twice");
    free(raw);
    free(peft);
    free(tar);
    free_adapter(&f);
    test_rmtree(dir);
    free(dir);
}

/* Appends the pax record "LEN key=value\n" to buf at *n; LEN counts the whole record, its own
 * digits included (computed here independently of the parser). */
static void pax_rec(char *buf, size_t *n, const char *key, const char *value) {
    size_t body = 1 + strlen(key) + 1 + strlen(value) + 1; /* " key=value\n" */
    size_t len = body + 1;
    while (len != body + (size_t)snprintf(NULL, 0, "%zu", len)) len++;
    *n += (size_t)sprintf(buf + *n, "%zu %s=%s\n", len, key, value);
}

/* Returns a new archive (length in *ret_len): raw[0..at), then a header block of type with data
 * ext[0..n) padded to 512, then raw[at..len). The header is a valid POSIX ustar one. */
static unsigned char *tar_insert(const unsigned char *raw, size_t len, size_t at, char type, const void *ext, size_t n,
                                 size_t *ret_len) {
    size_t padded = (n + 511) / 512 * 512;
    unsigned char *out = calloc(1, len + 512 + padded);
    memcpy(out, raw, at);
    unsigned char *h = out + at;
    snprintf((char *)h, 100, "%s", type == 'L' ? "././@LongLink" : "adapter/PaxHeaders/x");
    memcpy(h + 100, "0000644", 8);
    snprintf((char *)h + 124, 12, "%011zo", n);
    h[156] = (unsigned char)type;
    memcpy(h + 257, "ustar\0" "00", 8);
    tar_reseal(out, at);
    memcpy(out + at + 512, ext, n);
    memcpy(out + at + 512 + padded, raw + at, len - at);
    *ret_len = len + 512 + padded;
    return out;
}

/* pax ('x', 'g') and GNU long-name ('L', 'K') headers, as GNU tar --format=pax/gnu and macOS tar
 * write them: a pax path and size replace the next member's name and size field (here the
 * member's own fields are made wrong, so loading works only if they are honoured), other keys
 * and global headers are skipped; malformed records fail naming the archive, byte and problem.
 * (GNU tar itself as producer: export_cli.py.) */
static void test_tar_pax(void **state) {
    (void)state;
    struct lorad_llama_config c = test_config();
    struct adapter_fixture f;
    make_adapter(&f, &c, 4);
    char *dir = test_mkdtemp("adapter-pax");
    char *peft = test_path(dir, "peft"), *tar = test_path(dir, "adapter.tar");
    struct lorad_adapter_meta meta = test_meta(4, 8, false);
    struct lorad_error err = {0};
    assert_int_equal(lorad_adapter_write_peft(peft, &meta, f.t, f.n, &err), 0);
    static const char *const both[] = {"adapter_config.json", "adapter_model.safetensors"};
    assert_int_equal(lorad_tar_write(tar, peft, both, 2, "adapter", &err), 0);
    size_t len, n2, st_size;
    unsigned char *raw = test_read_file(tar, &len);
    size_t st_at = tar_find(raw, len, "adapter_model.safetensors");
    char *st_path = test_path(peft, "adapter_model.safetensors");
    free(test_read_file(st_path, &st_size));
    free(st_path);
    /* the safetensors member renamed to junk with size 0; an 'x' header gives back a 200-char path
     * and the size; mtime, SCHILY.* and LIBARCHIVE.* records are ignored; a 'g' header up front */
    unsigned char *mod = malloc(len);
    memcpy(mod, raw, len);
    memset(mod + st_at, 0, 100);
    memcpy(mod + st_at, "junk", 4);
    memcpy(mod + st_at + 124, "00000000000", 11);
    tar_reseal(mod, st_at);
    char rec[70000], longpath[256], sizebuf[32];
    size_t rn = 0;
    memset(longpath, 'd', 200);
    snprintf(longpath + 200, sizeof longpath - 200, "/adapter_model.safetensors");
    snprintf(sizebuf, sizeof sizebuf, "%zu", st_size);
    pax_rec(rec, &rn, "mtime", "1795934285.097888902");
    pax_rec(rec, &rn, "path", longpath);
    pax_rec(rec, &rn, "SCHILY.xattr.user.a", "b=c");
    pax_rec(rec, &rn, "size", sizebuf);
    pax_rec(rec, &rn, "LIBARCHIVE.creationtime", "1");
    unsigned char *x = tar_insert(mod, len, st_at, 'x', rec, rn, &n2);
    size_t gn = 0;
    char grec[128];
    pax_rec(grec, &gn, "comment", "made by a test");
    size_t n3;
    unsigned char *xg = tar_insert(x, n2, 0, 'g', grec, gn, &n3);
    test_write_file(tar, xg, n3);
    struct lorad_adapter *a = NULL;
    assert_int_equal(lorad_adapter_load(tar, &c, &a, &err), 0);
    assert_same_tensors(a, &f);
    lorad_adapter_free(a);
    free(xg);
    free(x);
    /* a GNU 'L' long name (and a 'K' long link, skipped) for the renamed member: its size field is
     * intact here, since GNU format has no size override */
    memcpy(mod, raw, len);
    memset(mod + st_at, 0, 100);
    memcpy(mod + st_at, "junk", 4);
    tar_reseal(mod, st_at);
    unsigned char *l = tar_insert(mod, len, st_at, 'L', longpath, strlen(longpath) + 1, &n2);
    unsigned char *lk = tar_insert(l, n2, st_at, 'K', "target", 7, &n3);
    test_write_file(tar, lk, n3);
    assert_int_equal(lorad_adapter_load(tar, &c, &a, &err), 0);
    assert_same_tensors(a, &f);
    lorad_adapter_free(a);
    free(l);
    free(lk);
    /* without the 'x' header the renamed, size-0 member is not ours: the override is what works */
    memcpy(mod, raw, len);
    memset(mod + st_at, 0, 100);
    memcpy(mod + st_at, "junk", 4);
    tar_reseal(mod, st_at);
    expect_bad_tar(dir, "noext.tar", mod, len, -EINVAL, "the tar holds no adapter_model.safetensors");

    /* malformed records; each names the header's byte and the record's */
    char want[256];
    snprintf(want, sizeof want, "malformed pax extended header at byte %zu: record at byte %zu: ", st_at, st_at + 512);
    static const struct { const char *rec, *why; } bad[] = {
        {"99 path=adapter_model.safetensors\n", "length runs past the end of the header's data"},
        {"20 path=adapter_model.safetensors\n", "record does not end in a newline"},
        {"x1 path=a\n", "bad length field"},
        {"10path=ab\n", "bad length field"},
        {"-12 path=ab\n", "bad length field"},
        {"012345678901234567890 k=v\n", "bad length field"},
        {"13 pathabcde\n", "no '=' in the record"},
        {"9 =value\n", "empty key"},
        {"11 size=1x\n", "size is not a decimal number"},
        {"8 size=\n", "size is not a decimal number"},
        {"3 \n", "length too short"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char w[512], name[32];
        snprintf(w, sizeof w, "%s%s", want, bad[i].why);
        snprintf(name, sizeof name, "badrec%zu.tar", i);
        x = tar_insert(raw, len, st_at, 'x', bad[i].rec, strlen(bad[i].rec), &n2);
        expect_bad_tar(dir, name, x, n2, -EINVAL, w);
        free(x);
    }
    /* a good record followed by a bad one: the second record's byte is named */
    rn = 0;
    pax_rec(rec, &rn, "mtime", "1");
    size_t second = rn;
    memcpy(rec + rn, "5 a=b\n", 6); /* 6 bytes, says 5 */
    rn += 6;
    x = tar_insert(raw, len, st_at, 'x', rec, rn, &n2);
    snprintf(want, sizeof want, "malformed pax extended header at byte %zu: record at byte %zu: record does not end",
             st_at, st_at + 512 + second);
    expect_bad_tar(dir, "second.tar", x, n2, -EINVAL, want);
    free(x);
    /* the same checks apply to a global header */
    x = tar_insert(raw, len, 0, 'g', "13 pathabcde\n", 13, &n2);
    expect_bad_tar(dir, "badg.tar", x, n2, -EINVAL, "malformed pax extended header at byte 0: record at byte 512: no '='");
    free(x);
    /* an extended header over 64 KiB (one valid comment record) */
    rn = 0;
    char *big = malloc(65536 + 1);
    memset(big, 'c', 65536);
    big[65536] = '\0';
    pax_rec(rec, &rn, "comment", big);
    free(big);
    x = tar_insert(raw, len, st_at, 'x', rec, rn, &n2);
    snprintf(want, sizeof want, "pax extended header at byte %zu is %zu bytes, more than the 65536 allowed", st_at, rn);
    expect_bad_tar(dir, "bigext.tar", x, n2, -EINVAL, want);
    free(x);
    /* sparse members; a path of 4096 bytes; an 'x' header with nothing after it */
    rn = 0;
    pax_rec(rec, &rn, "GNU.sparse.major", "1");
    x = tar_insert(raw, len, st_at, 'x', rec, rn, &n2);
    expect_bad_tar(dir, "sparse.tar", x, n2, -EINVAL, "describes a sparse file (GNU.sparse.major)");
    free(x);
    char *huge = malloc(4097);
    memset(huge, 'p', 4096);
    huge[4096] = '\0';
    rn = 0;
    pax_rec(rec, &rn, "path", huge);
    x = tar_insert(raw, len, st_at, 'x', rec, rn, &n2);
    expect_bad_tar(dir, "longpath.tar", x, n2, -EINVAL, "path is empty, holds a NUL or is longer than 4095 bytes");
    free(x);
    x = tar_insert(raw, len, st_at, 'L', huge, 4097, &n2);
    expect_bad_tar(dir, "longL.tar", x, n2, -EINVAL, "GNU long-name header at byte");
    free(x);
    x = tar_insert(raw, len, st_at, 'L', "adapter_model.safetensors", 25, &n2); /* no NUL */
    expect_bad_tar(dir, "nonulL.tar", x, n2, -EINVAL, "not NUL-terminated");
    free(x);
    free(huge);
    size_t end = tar_find(raw, len, "adapter_model.safetensors") + 512 + (st_size + 511) / 512 * 512;
    rn = 0;
    pax_rec(rec, &rn, "path", "adapter/extra");
    x = tar_insert(raw, len, end, 'x', rec, rn, &n2);
    snprintf(want, sizeof want, "the extended header at byte %zu is not followed by a member", end);
    expect_bad_tar(dir, "dangling.tar", x, n2, -EINVAL, want);
    free(x);
    /* a pax size past the archive's end is a truncation */
    rn = 0;
    pax_rec(rec, &rn, "size", "99999999");
    x = tar_insert(raw, len, st_at, 'x', rec, rn, &n2);
    expect_bad_tar(dir, "paxsize.tar", x, n2, -EINVAL, "truncated tar archive: member adapter/adapter_model.safetensors needs 99999999 bytes");
    free(x);
    free(mod);
    free(raw);
    free(peft);
    free(tar);
    free_adapter(&f);
    test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_peft_round_trip),
        cmocka_unit_test(test_gguf_round_trip),
        cmocka_unit_test(test_gguf_round_trip_rslora),
        cmocka_unit_test(test_validation_failures),
        cmocka_unit_test(test_half_precision_and_bad_dtype),
        cmocka_unit_test(test_truncated_and_missing),
        cmocka_unit_test(test_gguf_failures),
        cmocka_unit_test(test_tar),
        cmocka_unit_test(test_tar_pax),
        cmocka_unit_test(test_merge_kernel_matches_loops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
