/* llama.cpp LoRA adapters as GGUF v3 files (the layout llama.cpp's LoRA loader reads). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter.h"
#include "fsutil.h"
#include "load_common.h"

enum { GGUF_TYPE_UINT32 = 4, GGUF_TYPE_FLOAT32 = 6, GGUF_TYPE_STRING = 8 };
enum { GGML_TYPE_F32 = 0 };
#define GGUF_ALIGNMENT 32

/* A growable byte buffer for the header; tensor data is streamed after it. */
struct buf {
    unsigned char *p;
    size_t len, cap;
    int err;
};

static void put(struct buf *b, const void *data, size_t n) {
    if (b->err) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p) {
            b->err = -ENOMEM;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}
static void put_u32(struct buf *b, uint32_t v) { put(b, &v, 4); } /* GGUF is little-endian, as is x86-64 */
static void put_u64(struct buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(struct buf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void put_kv_str(struct buf *b, const char *key, const char *value) {
    put_str(b, key);
    put_u32(b, GGUF_TYPE_STRING);
    put_str(b, value);
}
static void put_kv_f32(struct buf *b, const char *key, float value) {
    put_str(b, key);
    put_u32(b, GGUF_TYPE_FLOAT32);
    put(b, &value, 4);
}

/* Maps "model.layers.3.self_attn.q_proj.lora_A.weight" to "blk.3.attn_q.weight.lora_a" and says
 * whether it is a lora_B of q or k (whose rows need the RoPE permutation). */
static int gguf_name(const char *hf, char *out, size_t n, int *ret_rope_heads_kind) {
    static const struct { const char *hf, *gguf; int rope; } modules[] = {
        {"self_attn.q_proj", "attn_q", 1}, {"self_attn.k_proj", "attn_k", 2}, {"self_attn.v_proj", "attn_v", 0},
        {"self_attn.o_proj", "attn_output", 0}, {"mlp.gate_proj", "ffn_gate", 0}, {"mlp.up_proj", "ffn_up", 0},
        {"mlp.down_proj", "ffn_down", 0},
    };
    const char *ab = strstr(hf, ".lora_A.weight") ? "a" : strstr(hf, ".lora_B.weight") ? "b" : NULL;
    if (!ab) return -EINVAL;
    *ret_rope_heads_kind = 0;
    if (strncmp(hf, "lm_head.", 8) == 0) {
        snprintf(out, n, "output.weight.lora_%s", ab);
        return 0;
    }
    int layer, consumed = 0;
    if (sscanf(hf, "model.layers.%d.%n", &layer, &consumed) != 1 || consumed == 0) return -EINVAL;
    for (size_t i = 0; i < sizeof modules / sizeof modules[0]; i++) {
        size_t len = strlen(modules[i].hf);
        if (strncmp(hf + consumed, modules[i].hf, len) == 0 && hf[consumed + len] == '.') {
            snprintf(out, n, "blk.%d.%s.weight.lora_%s", layer, modules[i].gguf, ab);
            if (*ab == 'b') *ret_rope_heads_kind = modules[i].rope;
            return 0;
        }
    }
    return -EINVAL;
}

int lorad_adapter_write_gguf(const char *path, const struct lorad_adapter_meta *meta,
                             const struct lorad_adapter_tensor *tensors, int n_tensors,
                             const struct lorad_llama_config *cfg, struct lorad_error *err) {
    if (meta->use_dora)
        return lorad_error_set(err, -EOPNOTSUPP, "format",
                               "a DoRA adapter cannot be written as a GGUF LoRA: llama.cpp applies W + scale*B*A and "
                               "has no magnitude vectors; export the merged model (format merged) or PEFT instead");
    struct buf h = {0};
    put(&h, "GGUF", 4);
    put_u32(&h, 3);
    put_u64(&h, (uint64_t)n_tensors);
    put_u64(&h, 4);
    put_kv_str(&h, "general.architecture", "llama");
    put_kv_str(&h, "general.type", "adapter");
    put_kv_str(&h, "adapter.type", "lora");
    /* llama.cpp scales by alpha / r; rsLoRA's alpha / sqrt(r) needs alpha * sqrt(r) here. */
    float alpha = (float)(meta->use_rslora ? meta->alpha * sqrt((double)meta->r) : meta->alpha);
    put_kv_f32(&h, "adapter.lora.alpha", alpha);

    uint64_t offset = 0;
    int *rope_kind = calloc((size_t)(n_tensors > 0 ? n_tensors : 1), sizeof *rope_kind);
    if (!rope_kind) {
        free(h.p);
        return lorad_error_set(err, -ENOMEM, "", "out of memory");
    }
    int r = 0;
    for (int i = 0; i < n_tensors; i++) {
        char name[160];
        if (gguf_name(tensors[i].name, name, sizeof name, &rope_kind[i]) < 0) {
            r = lorad_error_set(err, -EINVAL, "", "%s: no GGUF name for adapter tensor %s", path, tensors[i].name);
            goto out;
        }
        put_str(&h, name);
        put_u32(&h, 2);
        put_u64(&h, (uint64_t)tensors[i].cols); /* ne[0] is the row length */
        put_u64(&h, (uint64_t)tensors[i].rows);
        put_u32(&h, GGML_TYPE_F32);
        put_u64(&h, offset);
        uint64_t bytes = (uint64_t)(tensors[i].rows * tensors[i].cols) * sizeof(float);
        offset += (bytes + GGUF_ALIGNMENT - 1) / GGUF_ALIGNMENT * GGUF_ALIGNMENT;
    }
    static const unsigned char zeros[GGUF_ALIGNMENT];
    put(&h, zeros, (GGUF_ALIGNMENT - h.len % GGUF_ALIGNMENT) % GGUF_ALIGNMENT);
    if (h.err) {
        r = lorad_error_set(err, h.err, "", "out of memory");
        goto out;
    }

    struct lorad_atomic_file file;
    if ((r = lorad_atomic_open(&file, path)) < 0) {
        r = lorad_error_set(err, r, "", "cannot create %s.tmp: %s", path, strerror(-r));
        goto out;
    }
    int fd = file.fd;
    r = lorad_write_all(fd, h.p, h.len);
    for (int i = 0; r == 0 && i < n_tensors; i++) {
        const struct lorad_adapter_tensor *t = &tensors[i];
        size_t bytes = (size_t)(t->rows * t->cols) * sizeof(float);
        const float *data = t->data;
        float *permuted = NULL;
        if (rope_kind[i]) {
            int heads = rope_kind[i] == 1 ? cfg->n_heads : cfg->n_kv_heads;
            if (t->rows != (int64_t)heads * cfg->head_dim) {
                r = lorad_error_set(err, -EINVAL, "", "%s: %s has %lld rows, expected %d", path, t->name,
                                    (long long)t->rows, heads * cfg->head_dim);
                break;
            }
            permuted = malloc(bytes);
            if (!permuted) {
                r = -ENOMEM;
                break;
            }
            lorad_rope_permute_rows(permuted, t->data, t->rows, (size_t)t->cols * sizeof(float), cfg->head_dim, 0);
            data = permuted;
        }
        r = lorad_write_all(fd, data, bytes);
        free(permuted);
        if (r == 0) r = lorad_write_all(fd, zeros, (GGUF_ALIGNMENT - bytes % GGUF_ALIGNMENT) % GGUF_ALIGNMENT);
    }
    if ((r = lorad_atomic_finish(&file, r)) < 0) {
        if (!err || !err->message[0]) lorad_error_set(err, r, "", "cannot write %s: %s", path, strerror(-r));
    }
out:
    free(rope_kind);
    free(h.p);
    return r;
}
