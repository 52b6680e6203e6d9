/* Loading PEFT and llama.cpp GGUF LoRA adapters into owned f32 tensors, with validation. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapter_read.h"
#include "gguf.h"
#include "lora.h"
#include "load_common.h"
#include "safetensors_read.h"
#include "tar.h"
#include "weights.h"

#define PEFT_PREFIX "base_model.model."
#define LM_HEAD_MODULE 7

/* The projections lorad adapts, in PEFT and GGUF spelling; index LM_HEAD_MODULE is lm_head. */
static const struct {
    const char *hf, *gguf, *target;
} modules[] = {
    {"self_attn.q_proj", "attn_q", "q_proj"},   {"self_attn.k_proj", "attn_k", "k_proj"},
    {"self_attn.v_proj", "attn_v", "v_proj"},   {"self_attn.o_proj", "attn_output", "o_proj"},
    {"mlp.gate_proj", "ffn_gate", "gate_proj"}, {"mlp.up_proj", "ffn_up", "up_proj"},
    {"mlp.down_proj", "ffn_down", "down_proj"}, {"lm_head", "output", "lm_head"},
};

enum { PART_A, PART_B, PART_MAGNITUDE };
struct parsed_name {
    int layer;  /* -1 for lm_head */
    int module; /* index into modules[] */
    int part;   /* PART_* */
};

/* Parses a decimal layer index without sign or leading zeros; returns the chars consumed or 0. */
static int parse_index(const char *s, int *ret) {
    int n = 0;
    long v = 0;
    while (s[n] >= '0' && s[n] <= '9' && n < 7) v = v * 10 + (s[n++] - '0');
    if (n == 0 || (n > 1 && s[0] == '0') || (s[n] >= '0' && s[n] <= '9')) return 0;
    *ret = (int)v;
    return n;
}

/* "model.layers.N.<module>.lora_{A,B}.weight" or "lm_head.lora_{A,B}.weight", or the same with
 * DoRA's "lora_magnitude_vector" (PEFT saves it without ".weight"); -EINVAL otherwise. */
static int parse_peft_name(const char *name, struct parsed_name *p) {
    const char *rest = NULL;
    if (strncmp(name, "lm_head.", 8) == 0) {
        p->layer = -1;
        p->module = LM_HEAD_MODULE;
        rest = name + 8;
    } else {
        if (strncmp(name, "model.layers.", 13) != 0) return -EINVAL;
        int n = parse_index(name + 13, &p->layer);
        if (n == 0 || name[13 + n] != '.') return -EINVAL;
        const char *m = name + 13 + n + 1;
        p->module = -1;
        for (int i = 0; i < LM_HEAD_MODULE; i++) {
            size_t len = strlen(modules[i].hf);
            if (strncmp(m, modules[i].hf, len) == 0 && m[len] == '.') {
                p->module = i;
                rest = m + len + 1;
                break;
            }
        }
        if (p->module < 0) return -EINVAL;
    }
    if (strcmp(rest, "lora_A.weight") == 0) p->part = PART_A;
    else if (strcmp(rest, "lora_B.weight") == 0) p->part = PART_B;
    else if (strcmp(rest, "lora_magnitude_vector") == 0) p->part = PART_MAGNITUDE;
    else return -EINVAL;
    return 0;
}

/* "blk.N.<gguf>.weight.lora_{a,b}" or "output.weight.lora_{a,b}" -> the PEFT name. */
static int peft_name_of_gguf(const char *g, char *out, size_t n) {
    int layer = -1, consumed = 0;
    const char *m = g;
    if (strncmp(g, "blk.", 4) == 0) {
        consumed = parse_index(g + 4, &layer);
        if (consumed == 0 || g[4 + consumed] != '.') return -EINVAL;
        m = g + 4 + consumed + 1;
    }
    for (int i = 0; i <= LM_HEAD_MODULE; i++) {
        if ((i == LM_HEAD_MODULE) != (layer < 0)) continue;
        size_t len = strlen(modules[i].gguf);
        if (strncmp(m, modules[i].gguf, len) != 0) continue;
        const char *rest = m + len;
        char ab = strcmp(rest, ".weight.lora_a") == 0 ? 'A' : strcmp(rest, ".weight.lora_b") == 0 ? 'B' : 0;
        if (!ab) return -EINVAL;
        if (layer < 0) snprintf(out, n, "lm_head.lora_%c.weight", ab);
        else snprintf(out, n, "model.layers.%d.%s.lora_%c.weight", layer, modules[i].hf, ab);
        return 0;
    }
    return -EINVAL;
}

/* in/out features of a module of the base (HF layout: weight is (out, in)). */
static void module_shape(const struct lorad_llama_config *c, int module, int64_t *in, int64_t *out) {
    int64_t d = c->dim, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim,
            f = c->hidden_dim;
    static const int8_t in_kind[] = {0, 0, 0, 1, 0, 0, 3, 0}, out_kind[] = {1, 2, 2, 0, 3, 3, 0, 4};
    int64_t sizes[] = {d, q, kv, f, c->vocab_size};
    *in = sizes[in_kind[module]];
    *out = sizes[out_kind[module]];
}

int lorad_adapter_validate(const struct lorad_adapter_tensor *tensors, int n_tensors, int r,
                           const struct lorad_llama_config *cfg, const char *source, struct lorad_error *err) {
    if (n_tensors <= 0) return lorad_error_set(err, -EINVAL, "", "%s: the adapter holds no LoRA tensors", source);
    if (n_tensors > LORAD_ADAPTER_MAX_TENSORS)
        return lorad_error_set(err, -EINVAL, "", "%s: %d tensors, more than the %d a LoRA adapter can hold", source,
                               n_tensors, LORAD_ADAPTER_MAX_TENSORS);
    int max_layer = cfg ? cfg->n_layers - 1 : 0;
    for (int i = 0; i < n_tensors; i++) {
        const struct lorad_adapter_tensor *t = &tensors[i];
        struct parsed_name p;
        if (parse_peft_name(t->name, &p) < 0)
            return lorad_error_set(err, -EINVAL, t->name,
                                   "%s: unknown adapter tensor %s (lorad applies only lora_A/lora_B and DoRA's "
                                   "lora_magnitude_vector of q/k/v/o/gate/up/down_proj and lm_head)",
                                   source, t->name);
        if (cfg && p.layer >= cfg->n_layers)
            return lorad_error_set(err, -EINVAL, t->name, "%s: tensor %s: layer %d out of range (the base has %d layers)",
                                   source, t->name, p.layer, cfg->n_layers);
        if (p.layer >= LORAD_MAX_LAYERS)
            return lorad_error_set(err, -EINVAL, t->name, "%s: tensor %s: layer %d beyond lorad's limit of %d layers",
                                   source, t->name, p.layer, LORAD_MAX_LAYERS);
        if (p.layer > max_layer) max_layer = p.layer;
        int64_t want_rows = -1, want_cols = -1, in, out;
        if (cfg) {
            module_shape(cfg, p.module, &in, &out);
            want_rows = p.part == PART_A ? r : out;
            want_cols = p.part == PART_A ? in : p.part == PART_B ? r : 1;
        } else {
            want_rows = p.part == PART_A ? r : t->rows;
            want_cols = p.part == PART_A ? t->cols : p.part == PART_B ? r : 1;
        }
        if (p.part == PART_MAGNITUDE && (t->rows != want_rows || t->cols != 1))
            return lorad_error_set(err, -EINVAL, t->name, "%s: tensor %s has %lld elements, expected (%lld) (the module's "
                                   "outputs)", source, t->name, (long long)(t->rows * t->cols), (long long)want_rows);
        if (t->rows != want_rows || t->cols != want_cols)
            return lorad_error_set(err, -EINVAL, t->name, "%s: tensor %s has shape (%lld, %lld), expected (%lld, %lld)%s",
                                   source, t->name, (long long)t->rows, (long long)t->cols, (long long)want_rows,
                                   (long long)want_cols,
                                   (p.part == PART_B ? t->cols != r : t->rows != r) ? " (rank differs from r)" : "");
    }
    /* Each (layer, module) must have exactly one A and one B, and a magnitude either in every
     * module (DoRA) or in none. */
    size_t n_slots = ((size_t)max_layer + 2) * 8;
    unsigned char *seen = calloc(n_slots, 1);
    if (!seen) return lorad_error_set(err, -ENOMEM, "", "out of memory");
    int rc = 0;
    for (int i = 0; i < n_tensors && rc == 0; i++) {
        struct parsed_name p;
        parse_peft_name(tensors[i].name, &p);
        size_t slot = (size_t)(p.layer + 1) * 8 + (size_t)p.module;
        unsigned char bit = (unsigned char)(1u << p.part);
        if (seen[slot] & bit)
            rc = lorad_error_set(err, -EINVAL, tensors[i].name, "%s: tensor %s appears twice", source, tensors[i].name);
        seen[slot] |= bit;
    }
    bool dora = false;
    for (int i = 0; i < n_tensors; i++) dora = dora || lorad_lora_is_magnitude_name(tensors[i].name);
    for (int i = 0; i < n_tensors && rc == 0; i++) {
        struct parsed_name p;
        parse_peft_name(tensors[i].name, &p);
        unsigned char have = seen[(size_t)(p.layer + 1) * 8 + (size_t)p.module];
        char module[96];
        if (p.layer < 0) snprintf(module, sizeof module, "lm_head");
        else snprintf(module, sizeof module, "model.layers.%d.%s", p.layer, modules[p.module].hf);
        if ((have & 3) != 3)
            rc = lorad_error_set(err, -EINVAL, tensors[i].name, "%s: %s has %s but no %s.lora_%c.weight", source, module,
                                 tensors[i].name, module, (have & 1) ? 'B' : 'A');
        else if (dora && !(have & 4))
            rc = lorad_error_set(err, -EINVAL, tensors[i].name,
                                 "%s: %s has no %s.lora_magnitude_vector, which DoRA needs in every adapted module "
                                 "(other modules have one)", source, module, module);
    }
    free(seen);
    return rc;
}

void lorad_adapter_free(struct lorad_adapter *a) {
    if (!a) return;
    for (int i = 0; i < a->n_tensors; i++) free((void *)a->tensors[i].data);
    free(a->tensors);
    free(a->path);
    free(a);
}

const struct lorad_adapter_tensor *lorad_adapter_find(const struct lorad_adapter *a, const char *name) {
    for (int i = 0; i < a->n_tensors; i++)
        if (strcmp(a->tensors[i].name, name) == 0) return &a->tensors[i];
    return NULL;
}

int lorad_adapter_module(const struct lorad_adapter *a, const char *module, const struct lorad_adapter_tensor **ret_A,
                         const struct lorad_adapter_tensor **ret_B) {
    char name[160];
    snprintf(name, sizeof name, "%s.lora_A.weight", module);
    const struct lorad_adapter_tensor *A = lorad_adapter_find(a, name);
    snprintf(name, sizeof name, "%s.lora_B.weight", module);
    const struct lorad_adapter_tensor *B = lorad_adapter_find(a, name);
    if (!A || !B) return -ENOENT;
    *ret_A = A;
    *ret_B = B;
    return 0;
}

/* Copies count elements of dtype ("F32", "BF16", "F16") from possibly unaligned src into dst. */
static void to_f32(float *dst, const void *src, const char *dtype, int64_t count) {
    const unsigned char *s = src;
    if (strcmp(dtype, "F32") == 0) {
        memcpy(dst, s, (size_t)count * sizeof(float));
        return;
    }
    int bf16 = strcmp(dtype, "BF16") == 0;
    for (int64_t i = 0; i < count; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        dst[i] = bf16 ? lorad_bf16_to_f32(h) : lorad_f16_to_f32(h);
    }
}

static int is_float_dtype(const char *dtype) {
    return strcmp(dtype, "F32") == 0 || strcmp(dtype, "BF16") == 0 || strcmp(dtype, "F16") == 0;
}

struct source_tensor {
    const void *data;
    const char *dtype;
};

/* Allocates the adapter's buffers and converts every source tensor into them. */
static int fill_tensors(struct lorad_adapter *a, const struct source_tensor *src, struct lorad_error *err) {
    for (int i = 0; i < a->n_tensors; i++) {
        struct lorad_adapter_tensor *t = &a->tensors[i];
        float *buf = malloc((size_t)(t->rows * t->cols) * sizeof(float));
        if (!buf) return lorad_error_set(err, -ENOMEM, "", "out of memory loading %s", a->path);
        to_f32(buf, src[i].data, src[i].dtype, t->rows * t->cols);
        t->data = buf;
    }
    return 0;
}

/* The tensors of an opened adapter_model.safetensors f (a->meta already read), validated and
 * converted; path names f in errors. Does not close f. */
static int load_peft_tensors(struct lorad_adapter *a, const struct lorad_llama_config *cfg, struct lorad_st_file *f,
                             const char *path, struct lorad_error *err) {
    int rc;
    size_t n = lorad_st_n_tensors(f);
    struct source_tensor *src = NULL;
    if (n == 0 || n > LORAD_ADAPTER_MAX_TENSORS) {
        rc = lorad_error_set(err, -EINVAL, "", "%s: %zu tensors; a LoRA adapter holds 2 to %d", path, n,
                             LORAD_ADAPTER_MAX_TENSORS);
        goto out;
    }
    a->tensors = calloc(n, sizeof *a->tensors);
    src = calloc(n, sizeof *src);
    if (!a->tensors || !src) {
        rc = lorad_error_set(err, -ENOMEM, "", "out of memory loading %s", path);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const struct lorad_st_tensor *t = lorad_st_tensor_at(f, i);
        const char *name = strncmp(t->name, PEFT_PREFIX, strlen(PEFT_PREFIX)) == 0 ? t->name + strlen(PEFT_PREFIX) : t->name;
        struct lorad_adapter_tensor *dst = &a->tensors[a->n_tensors];
        if (strlen(name) >= sizeof dst->name) {
            rc = lorad_error_set(err, -EINVAL, "", "%s: tensor name too long: %.64s...", path, t->name);
            goto out;
        }
        snprintf(dst->name, sizeof dst->name, "%s", name);
        if (!is_float_dtype(t->dtype)) {
            rc = lorad_error_set(err, -EINVAL, dst->name, "%s: tensor %s has dtype %s, expected F32, BF16 or F16", path,
                                 t->name, t->dtype);
            goto out;
        }
        int want_ndim = lorad_lora_is_magnitude_name(dst->name) ? 1 : 2;
        if (t->ndim != want_ndim) {
            rc = lorad_error_set(err, -EINVAL, dst->name, "%s: tensor %s has %d dimensions, expected %d", path, t->name,
                                 t->ndim, want_ndim);
            goto out;
        }
        dst->rows = t->shape[0];
        dst->cols = want_ndim == 2 ? t->shape[1] : 1;
        src[a->n_tensors] = (struct source_tensor){t->data, t->dtype};
        a->n_tensors++;
    }
    if ((rc = lorad_adapter_validate(a->tensors, a->n_tensors, a->meta.r, cfg, path, err)) < 0) goto out;
    bool has_magnitudes = false;
    for (int i = 0; i < a->n_tensors; i++) has_magnitudes = has_magnitudes || lorad_lora_is_magnitude_name(a->tensors[i].name);
    if (has_magnitudes != a->meta.use_dora) {
        rc = lorad_error_set(err, -EINVAL, "use_dora",
                             a->meta.use_dora ? "%s: adapter_config.json has use_dora true but the tensors hold no "
                                                "lora_magnitude_vector"
                                              : "%s: the tensors hold DoRA's lora_magnitude_vector but adapter_config.json "
                                                "has use_dora false",
                             path);
        goto out;
    }
    rc = fill_tensors(a, src, err);
out:
    free(src);
    return rc;
}

static int load_peft(struct lorad_adapter *a, const struct lorad_llama_config *cfg, struct lorad_error *err) {
    int rc = lorad_adapter_read_config(a->path, &a->meta, err);
    if (rc < 0) return rc;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/adapter_model.safetensors", a->path) >= (int)sizeof path)
        return lorad_error_set(err, -ENAMETOOLONG, "", "path too long: %s", a->path);
    struct lorad_st_file *f;
    if ((rc = lorad_st_open(path, &f, err)) < 0) return rc;
    rc = load_peft_tensors(a, cfg, f, path, err);
    lorad_st_close(f);
    return rc;
}

/* ---- adapter.tar: a POSIX tar archive of one PEFT folder (what engine/formats/tar_write.c writes and
 * the API serves, or what GNU/BSD tar make of the folder). The archive is mapped and its two members
 * are parsed where they lie, so there is no temporary directory to clean up. Headers are 512-byte
 * blocks (name[100] at 0, size as octal at 124, checksum at 148, type at 156, "ustar" at 257,
 * prefix[155] at 345), each member's data padded to 512 bytes, and a zero block ends the archive.
 * pax (POSIX.1-2001: macOS tar, GNU tar --format=pax/--posix) and GNU tar's own format put a long
 * name, or a size the octal field cannot hold, into an extra header before the member: type 'x'
 * (records "LEN KEY=VALUE\n" for the next member), 'g' (the same, for all later members) or 'L'
 * (GNU: the next member's name as data). */

/* Bounds on what extended headers may hold: a path, and the data of one extended header (tar
 * writes a few hundred bytes; these only keep a hostile archive from making us loop long). */
#define TAR_MAX_PATH 4096
#define TAR_MAX_PATH_S "4095" /* the longest path, for messages */
#define TAR_MAX_EXT (64 << 10)
#define TAR_MAX_PAX_RECORDS 1024
#define TAR_MAX_PAX_RECORDS_S "1024"

static const char *const tar_members[2] = {"adapter_config.json", "adapter_model.safetensors"};

/* Reads an octal tar field (NUL/space terminated, leading spaces allowed); -EINVAL when it holds
 * anything else, e.g. GNU's base-256 encoding of sizes beyond 8 GiB. */
static int tar_octal(const uint8_t *field, size_t width, uint64_t *ret) {
    size_t i = 0;
    while (i < width && field[i] == ' ') i++;
    uint64_t v = 0;
    int digits = 0;
    for (; i < width && field[i] >= '0' && field[i] <= '7'; i++, digits++) v = v * 8 + (uint64_t)(field[i] - '0');
    if (digits == 0 || (i < width && field[i] != '\0' && field[i] != ' ')) return -EINVAL;
    *ret = v;
    return 0;
}

/* A ustar header's magic, in the first 512 bytes of a file (n of them read). */
static int is_tar(const uint8_t *head, size_t n) {
    return n >= LORAD_TAR_BLOCK && memcmp(head + LORAD_TAR_MAGIC, "ustar", 5) == 0;
}

/* What a pax 'x' header or a GNU 'L' header says about the next member: its path and its size,
 * each overriding the ustar header's field when has_ is set. */
struct tar_pending {
    char path[TAR_MAX_PATH];
    int has_path, has_size;
    uint64_t size;
    uint64_t from; /* offset of the (first) extended header, for the error when no member follows */
};

/* Reads an unsigned decimal of n chars (no sign, at least one digit, below 2^63); -EINVAL otherwise. */
static int tar_decimal(const uint8_t *s, size_t n, uint64_t *ret) {
    uint64_t v = 0;
    if (n == 0 || n > 19) return -EINVAL; /* 19 digits always fit below 2^63 */
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -EINVAL;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *ret = v;
    return 0;
}

/* Parses the records "LEN KEY=VALUE\n" of a pax extended header (data d[0..n) of the header at
 * byte at of archive p; LEN is decimal and counts the whole record). When apply is set (type 'x',
 * which describes the next member) path and size go to *pend; other keys (mtime, uid, SCHILY.*,
 * LIBARCHIVE.*, ...) do not change which bytes are a member's data and are ignored, except
 * GNU.sparse.*, whose member data is a sparse map rather than the file. A global header ('g')
 * is only checked: its records would apply to every later member, and a global path or size
 * makes no sense for an archive of two files. Any malformed record is -EINVAL naming the byte. */
static int tar_pax_records(const uint8_t *d, size_t n, uint64_t at, int apply, struct tar_pending *pend,
                           const char *p, struct lorad_error *err) {
    size_t pos = 0;
    int count = 0;
    const char *why = NULL;
    while (pos < n && !why) {
        size_t digits = 0;
        while (pos + digits < n && digits < 20 && d[pos + digits] >= '0' && d[pos + digits] <= '9') digits++;
        uint64_t len = 0;
        if (++count > TAR_MAX_PAX_RECORDS) why = "more records than the " TAR_MAX_PAX_RECORDS_S " allowed";
        else if (tar_decimal(d + pos, digits, &len) < 0 || pos + digits >= n || d[pos + digits] != ' ')
            why = "bad length field (want decimal digits and a space)";
        else if (len > n - pos) why = "length runs past the end of the header's data";
        else if (len < digits + 4) why = "length too short for \"KEY=VALUE\\n\""; /* "N k=\n" at least */
        else if (d[pos + len - 1] != '\n') why = "record does not end in a newline (length field inconsistent)";
        if (why) break;
        const uint8_t *key = d + pos + digits + 1, *end = d + pos + len - 1; /* end: the '\n' */
        const uint8_t *eq = memchr(key, '=', (size_t)(end - key));
        if (!eq || eq == key) {
            why = eq ? "empty key" : "no '=' in the record";
            break;
        }
        size_t klen = (size_t)(eq - key), vlen = (size_t)(end - eq - 1);
        const uint8_t *val = eq + 1;
        uint64_t v;
        if (klen == 4 && memcmp(key, "size", 4) == 0) {
            if (tar_decimal(val, vlen, &v) < 0) why = "size is not a decimal number";
            else if (apply) pend->size = v, pend->has_size = 1;
        } else if (klen == 4 && memcmp(key, "path", 4) == 0) {
            if (vlen == 0 || vlen >= TAR_MAX_PATH || memchr(val, '\0', vlen))
                why = "path is empty, holds a NUL or is longer than " TAR_MAX_PATH_S " bytes";
            else if (apply) {
                memcpy(pend->path, val, vlen);
                pend->path[vlen] = '\0';
                pend->has_path = 1;
            }
        } else if (klen > 11 && memcmp(key, "GNU.sparse.", 11) == 0) {
            return lorad_error_set(err, -EINVAL, "adapter",
                                   "%s: pax extended header at byte %llu describes a sparse file (%.*s), which lorad "
                                   "does not read", p, (unsigned long long)at, (int)klen, (const char *)key);
        }
        if (!why) pos += (size_t)len;
    }
    if (why)
        return lorad_error_set(err, -EINVAL, "adapter", "%s: malformed pax extended header at byte %llu: record at byte %llu: %s",
                               p, (unsigned long long)at, (unsigned long long)(at + 512 + pos), why);
    return 0;
}

/* Handles the extended header h of type 'x', 'g' (pax), 'L' or 'K' (GNU long name / long link) at
 * byte at, whose data is size bytes (already checked to lie inside the archive): 'x' and 'L' set
 * the next member's path (and 'x' its size) in *pend; 'g' is checked and otherwise skipped; 'K'
 * names a link target, which no member we read has, and is skipped. */
static int tar_ext_header(const uint8_t *h, char type, uint64_t size, uint64_t at, struct tar_pending *pend,
                          const char *p, struct lorad_error *err) {
    if (size > TAR_MAX_EXT)
        return lorad_error_set(err, -EINVAL, "adapter", "%s: %s header at byte %llu is %llu bytes, more than the %d allowed", p,
                               type == 'L' || type == 'K' ? "GNU long-name" : "pax extended", (unsigned long long)at,
                               (unsigned long long)size, TAR_MAX_EXT);
    if (!pend->has_path && !pend->has_size) pend->from = at;
    const uint8_t *d = h + 512;
    if (type == 'x' || type == 'g') return tar_pax_records(d, (size_t)size, at, type == 'x', pend, p, err);
    if (type == 'L') {
        size_t n = strnlen((const char *)d, (size_t)size);
        if (n == 0 || n == size || n >= TAR_MAX_PATH)
            return lorad_error_set(err, -EINVAL, "adapter",
                                   "%s: GNU long-name header at byte %llu: the name is empty, not NUL-terminated or "
                                   "longer than " TAR_MAX_PATH_S " bytes", p, (unsigned long long)at);
        memcpy(pend->path, d, n + 1);
        pend->has_path = 1;
    }
    return 0;
}

static int load_tar(struct lorad_adapter *a, const struct lorad_llama_config *cfg, struct lorad_error *err) {
    const char *p = a->path;
    struct lorad_mapping m;
    int rc = lorad_map_file(p, &m, err);
    if (rc < 0) return rc;
    const uint8_t *found[2] = {NULL, NULL};
    size_t found_size[2] = {0, 0};
    uint64_t at = 0;
    struct tar_pending pend = {0};
    char name[TAR_MAX_PATH + 8];
    for (;;) {
        if (m.size - at < 512) {
            rc = lorad_error_set(err, -EINVAL, "adapter", "%s: truncated tar archive: no end-of-archive block after byte %llu",
                                 p, (unsigned long long)at);
            goto out;
        }
        const uint8_t *h = m.data + at;
        int zero = 1;
        for (int i = 0; i < 512 && zero; i++) zero = h[i] == 0;
        if (zero) {
            if (pend.has_path || pend.has_size) {
                rc = lorad_error_set(err, -EINVAL, "adapter",
                                     "%s: the extended header at byte %llu is not followed by a member", p,
                                     (unsigned long long)pend.from);
                goto out;
            }
            break;
        }
        uint64_t sum_want, size;
        if (!is_tar(h, LORAD_TAR_BLOCK) || tar_octal(h + LORAD_TAR_CHKSUM, 8, &sum_want) < 0 ||
            sum_want != lorad_tar_header_sum(h)) {
            rc = lorad_error_set(err, -EINVAL, "adapter", "%s: damaged tar header at byte %llu (bad magic or checksum)", p,
                                 (unsigned long long)at);
            goto out;
        }
        char type = (char)h[LORAD_TAR_TYPE];
        int ext = type == 'x' || type == 'g' || type == 'L' || type == 'K';
        if (ext || !pend.has_size) {
            if (tar_octal(h + LORAD_TAR_SIZE, 12, &size) < 0) {
                rc = lorad_error_set(err, -EINVAL, "adapter", "%s: tar header at byte %llu has a bad size field", p,
                                     (unsigned long long)at);
                goto out;
            }
        } else {
            size = pend.size; /* a pax size overrides the field (which may not hold it) */
        }
        if (ext || !pend.has_path) {
            /* prefix[155] is POSIX ustar's ("ustar\0"); GNU's "ustar  " keeps atime there */
            if (h[LORAD_TAR_PREFIX] && h[LORAD_TAR_MAGIC + 5] == '\0')
                snprintf(name, sizeof name, "%.155s/%.100s", (const char *)h + LORAD_TAR_PREFIX, (const char *)h);
            else snprintf(name, sizeof name, "%.100s", (const char *)h);
        } else {
            memcpy(name, pend.path, sizeof pend.path); /* NUL-terminated, shorter than name */
        }
        if (size > LORAD_ADAPTER_MAX_TAR_MEMBER) {
            rc = lorad_error_set(err, -EFBIG, "adapter", "%s: tar member %s is %llu bytes, more than the %llu allowed", p,
                                 name, (unsigned long long)size, (unsigned long long)LORAD_ADAPTER_MAX_TAR_MEMBER);
            goto out;
        }
        uint64_t padded = (size + 511) / 512 * 512;
        if (padded > m.size - at - 512) {
            rc = lorad_error_set(err, -EINVAL, "adapter",
                                 "%s: truncated tar archive: member %s needs %llu bytes but only %llu follow", p, name,
                                 (unsigned long long)size, (unsigned long long)(m.size - at - 512));
            goto out;
        }
        if (ext) {
            if ((rc = tar_ext_header(h, type, size, at, &pend, p, err)) < 0) goto out;
            at += 512 + padded;
            continue;
        }
        pend.has_path = pend.has_size = 0; /* 'x' and 'L' describe only this member */
        const char *slash = strrchr(name, '/');
        const char *base = slash ? slash + 1 : name;
        for (int k = 0; k < 2; k++) {
            if (strcmp(base, tar_members[k]) != 0) continue;
            if (type != '0' && type != '\0') {
                rc = lorad_error_set(err, -EINVAL, "adapter", "%s: tar member %s has type '%c', expected a regular file",
                                     p, name, type);
                goto out;
            }
            if (found[k]) {
                rc = lorad_error_set(err, -EINVAL, "adapter", "%s: the tar holds %s twice", p, tar_members[k]);
                goto out;
            }
            found[k] = h + 512;
            found_size[k] = (size_t)size;
        }
        at += 512 + padded;
    }
    for (int k = 0; k < 2; k++)
        if (!found[k]) {
            rc = lorad_error_set(err, -EINVAL, "adapter", "%s: the tar holds no %s (an adapter.tar is one PEFT folder)", p,
                                 tar_members[k]);
            goto out;
        }
    char source[4200];
    snprintf(source, sizeof source, "%s: %s", p, tar_members[0]);
    if ((rc = lorad_adapter_parse_config((const char *)found[0], found_size[0], source, &a->meta, err)) < 0) goto out;
    snprintf(source, sizeof source, "%s: %s", p, tar_members[1]);
    struct lorad_st_file *f;
    if ((rc = lorad_st_open_mem(source, found[1], found_size[1], &f, err)) < 0) goto out;
    rc = load_peft_tensors(a, cfg, f, source, err); /* copies the tensors out of the mapping */
    lorad_st_close(f);
out:
    lorad_unmap(&m);
    return rc;
}

static int load_gguf(struct lorad_adapter *a, const struct lorad_llama_config *cfg, struct lorad_error *err) {
    if (!cfg)
        return lorad_error_set(err, -EINVAL, "model", "%s: reading a GGUF adapter needs the base model's config", a->path);
    struct lorad_gguf *g;
    int rc = lorad_gguf_open(a->path, &g, err);
    if (rc < 0) return rc;
    struct source_tensor *src = NULL;
    const char *s;
    uint64_t len;
    static const struct { const char *key, *want; } kinds[] = {{"general.type", "adapter"}, {"adapter.type", "lora"}};
    for (size_t i = 0; i < 2; i++) {
        rc = lorad_gguf_get_string(g, kinds[i].key, &s, &len, err);
        if (rc == -ENOENT || (rc == 0 && (len != strlen(kinds[i].want) || memcmp(s, kinds[i].want, len) != 0)))
            rc = lorad_error_set(err, -EINVAL, kinds[i].key, "%s: %s must be \"%s\" in a LoRA adapter", a->path,
                                 kinds[i].key, kinds[i].want);
        if (rc < 0) goto out;
    }
    double alpha;
    rc = lorad_gguf_get_float(g, "adapter.lora.alpha", &alpha, err);
    if (rc == -ENOENT || (rc == 0 && !(alpha > 0)))
        rc = lorad_error_set(err, -EINVAL, "adapter.lora.alpha", "%s: adapter.lora.alpha must be present and > 0",
                             a->path);
    if (rc < 0) goto out;
    if (g->n_tensors == 0 || g->n_tensors > LORAD_ADAPTER_MAX_TENSORS) {
        rc = lorad_error_set(err, -EINVAL, "", "%s: %llu tensors; a LoRA adapter holds 2 to %d", a->path,
                             (unsigned long long)g->n_tensors, LORAD_ADAPTER_MAX_TENSORS);
        goto out;
    }
    a->tensors = calloc(g->n_tensors, sizeof *a->tensors);
    src = calloc(g->n_tensors, sizeof *src);
    if (!a->tensors || !src) {
        rc = lorad_error_set(err, -ENOMEM, "", "out of memory loading %s", a->path);
        goto out;
    }
    a->meta.r = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct lorad_gguf_tensor *t = &g->tensors[i];
        struct lorad_adapter_tensor *dst = &a->tensors[a->n_tensors];
        if (peft_name_of_gguf(t->name, dst->name, sizeof dst->name) < 0) {
            rc = lorad_error_set(err, -EINVAL, t->name, "%s: unknown adapter tensor %s", a->path, t->name);
            goto out;
        }
        const char *dtype = t->type == LORAD_GGML_F32 ? "F32" : t->type == LORAD_GGML_F16 ? "F16"
                          : t->type == LORAD_GGML_BF16 ? "BF16" : NULL;
        if (!dtype) {
            const char *tn = lorad_ggml_type_name(t->type);
            rc = lorad_error_set(err, -EINVAL, t->name, "%s: tensor %s has type %s, expected F32, BF16 or F16", a->path,
                                 t->name, tn ? tn : "unknown");
            goto out;
        }
        if (t->n_dims != 2) {
            rc = lorad_error_set(err, -EINVAL, t->name, "%s: tensor %s has %u dimensions, expected 2", a->path, t->name,
                                 t->n_dims);
            goto out;
        }
        dst->rows = (int64_t)t->ne[1];
        dst->cols = (int64_t)t->ne[0];
        if (a->meta.r == 0 && strstr(dst->name, ".lora_A.") && dst->rows > 0 && dst->rows <= 1024)
            a->meta.r = (int)dst->rows;
        src[a->n_tensors] = (struct source_tensor){t->data, dtype};
        a->n_tensors++;
    }
    if (a->meta.r == 0) {
        rc = lorad_error_set(err, -EINVAL, "", "%s: no lora_a tensor with a rank in [1, 1024]", a->path);
        goto out;
    }
    a->meta.alpha = alpha;
    if ((rc = lorad_adapter_validate(a->tensors, a->n_tensors, a->meta.r, cfg, a->path, err)) < 0) goto out;
    if ((rc = fill_tensors(a, src, err)) < 0) goto out;
    /* GGUF stores q/k rows in Meta's interleaved RoPE order; lorad works in HF's. */
    for (int i = 0; i < a->n_tensors; i++) {
        struct lorad_adapter_tensor *t = &a->tensors[i];
        struct parsed_name p;
        parse_peft_name(t->name, &p);
        if (p.part != PART_B || p.module > 1) continue;
        size_t bytes = (size_t)(t->rows * t->cols) * sizeof(float);
        float *hf = malloc(bytes);
        if (!hf) {
            rc = lorad_error_set(err, -ENOMEM, "", "out of memory loading %s", a->path);
            goto out;
        }
        lorad_rope_permute_rows(hf, t->data, t->rows, (size_t)t->cols * sizeof(float), cfg->head_dim, 1);
        free((void *)t->data);
        t->data = hf;
    }
    /* target_modules as PEFT would list them, for a PEFT re-write. */
    for (int m = 0; m <= LM_HEAD_MODULE && a->meta.n_targets < LORAD_ADAPTER_MAX_TARGETS; m++)
        for (int i = 0; i < a->n_tensors; i++) {
            struct parsed_name p;
            parse_peft_name(a->tensors[i].name, &p);
            if (p.module == m) {
                snprintf(a->meta.targets[a->meta.n_targets++], sizeof a->meta.targets[0], "%s", modules[m].target);
                break;
            }
        }
out:
    free(src);
    lorad_gguf_close(g);
    return rc;
}

int lorad_adapter_load(const char *path, const struct lorad_llama_config *cfg, struct lorad_adapter **ret_adapter,
                       struct lorad_error *err) {
    struct stat st;
    if (stat(path, &st) < 0) return lorad_error_set(err, -errno, "adapter", "%s: %s", path, strerror(errno));
    enum { PEFT_DIR, GGUF, TAR } kind = PEFT_DIR;
    if (!S_ISDIR(st.st_mode)) {
        uint8_t head[512] = {0};
        FILE *f = fopen(path, "rbe");
        if (!f) return lorad_error_set(err, -errno, "adapter", "%s: %s", path, strerror(errno));
        size_t got = fread(head, 1, sizeof head, f);
        fclose(f);
        if (got >= 4 && memcmp(head, "GGUF", 4) == 0) kind = GGUF;
        else if (S_ISREG(st.st_mode) && is_tar(head, got)) kind = TAR;
        else
            return lorad_error_set(err, -EINVAL, "adapter",
                                   "%s: not an adapter (expected a PEFT directory with adapter_config.json and "
                                   "adapter_model.safetensors, a tar of one (adapter.tar), or a GGUF LoRA file)",
                                   path);
    }
    struct lorad_adapter *a = calloc(1, sizeof *a);
    if (!a || !(a->path = strdup(path))) {
        free(a);
        return lorad_error_set(err, -ENOMEM, "", "out of memory");
    }
    int rc = kind == GGUF ? load_gguf(a, cfg, err) : kind == TAR ? load_tar(a, cfg, err) : load_peft(a, cfg, err);
    if (rc < 0) {
        lorad_adapter_free(a);
        return rc;
    }
    *ret_adapter = a;
    return 0;
}
