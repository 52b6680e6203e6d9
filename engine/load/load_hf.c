#include "load_hf.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "load_common.h"
#include "load_quant.h"
#include "safetensors_read.h"

#define MAX_JSON_FILE (64u << 20) /* config.json and index.json are small; refuse absurd ones */
#define MAX_SHARDS 4096

/* Reads a whole small file into a NUL-terminated malloc'd buffer. */
static int read_small_file(const char *path, char **ret_text, size_t *ret_len, struct lorad_error *err) {
    struct lorad_mapping m;
    int r = lorad_map_file(path, &m, err);
    if (r < 0) return r;
    if (m.size > MAX_JSON_FILE) {
        lorad_unmap(&m);
        return lorad_error_set(err, -EFBIG, "model", "%s: larger than %u bytes", path, MAX_JSON_FILE);
    }
    char *text = malloc(m.size + 1);
    if (!text) {
        lorad_unmap(&m);
        return lorad_error_set(err, -ENOMEM, "model", "out of memory reading %s", path);
    }
    memcpy(text, m.data, m.size);
    text[m.size] = '\0';
    *ret_len = m.size;
    lorad_unmap(&m);
    *ret_text = text;
    return 0;
}

/* An integer key: absent keeps *out (unless required), present must be an int in [lo, hi]. */
static int get_int(json_t *root, const char *key, int *out, int required, long long lo, long long hi,
                   const char *source, struct lorad_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required) return lorad_error_set(err, -EINVAL, key, "%s: missing required key \"%s\"", source, key);
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return lorad_error_set(err, -EINVAL, key, "%s: \"%s\" must be an integer in [%lld, %lld]", source, key, lo, hi);
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_float(json_t *root, const char *key, float *out, const char *source, struct lorad_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return lorad_error_set(err, -EINVAL, key, "%s: \"%s\" must be a number", source, key);
    *out = (float)json_number_value(v);
    return 0;
}

static int get_bool(json_t *root, const char *key, bool *out, const char *source, struct lorad_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return lorad_error_set(err, -EINVAL, key, "%s: \"%s\" must be true or false", source, key);
    *out = json_is_true(v);
    return 0;
}

/* bos/eos: an integer, null (-1), or (eos) a list whose first entry is used. */
static int get_token_id(json_t *root, const char *key, int *out, const char *source, struct lorad_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v) return 0;
    if (json_is_null(v)) {
        *out = -1;
        return 0;
    }
    if (json_is_array(v)) {
        if (json_array_size(v) == 0) {
            *out = -1;
            return 0;
        }
        v = json_array_get(v, 0);
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= LORAD_MAX_VOCAB)
        return lorad_error_set(err, -EINVAL, key, "%s: \"%s\" must be a token id (or a list of them)", source, key);
    *out = (int)json_integer_value(v);
    return 0;
}

static int parse_rope(json_t *root, struct lorad_llama_config *cfg, const char *source, struct lorad_error *err) {
    const char *key = "rope_scaling";
    json_t *rs = json_object_get(root, key);
    if (!rs || json_is_null(rs)) {
        key = "rope_parameters"; /* transformers >= 5 keeps rope_theta and scaling here */
        rs = json_object_get(root, key);
    }
    if (!rs || json_is_null(rs)) return 0;
    if (!json_is_object(rs)) return lorad_error_set(err, -EINVAL, key, "%s: \"%s\" must be an object or null", source, key);
    int r = get_float(rs, "rope_theta", &cfg->rope_theta, source, err);
    if (r < 0) return r;
    json_t *type = json_object_get(rs, "rope_type");
    if (!type) type = json_object_get(rs, "type");
    const char *t = json_is_string(type) ? json_string_value(type) : (type && !json_is_null(type) ? "?" : "default");
    if (strcmp(t, "default") == 0) return 0;
    if (strcmp(t, "llama3") != 0)
        return lorad_error_set(err, -EINVAL, "rope_scaling.rope_type",
                               "%s: %s type \"%s\" is not supported (only default and llama3)", source, key, t);
    struct lorad_rope_scaling *s = &cfg->rope_scaling;
    s->type = LORAD_ROPE_LLAMA3;
    s->factor = 0;
    if ((r = get_float(rs, "factor", &s->factor, source, err)) < 0) return r;
    if ((r = get_float(rs, "low_freq_factor", &s->low_freq_factor, source, err)) < 0) return r;
    if ((r = get_float(rs, "high_freq_factor", &s->high_freq_factor, source, err)) < 0) return r;
    return get_int(rs, "original_max_position_embeddings", &s->original_max_position_embeddings, 1, 1,
                   LORAD_MAX_SEQ_LEN, source, err);
}

static int parse_config(json_t *root, struct lorad_llama_config *cfg, const char *source, struct lorad_error *err) {
    if (!json_is_object(root)) return lorad_error_set(err, -EINVAL, "config", "%s: not a JSON object", source);
    lorad_llama_config_defaults(cfg);
    cfg->max_seq_len = 2048; /* LlamaConfig's default max_position_embeddings */
    json_t *mt = json_object_get(root, "model_type");
    const char *model_type = json_is_string(mt) ? json_string_value(mt) : NULL;
    if (!model_type) {
        json_t *arch = json_object_get(root, "architectures");
        if (json_is_array(arch) && json_is_string(json_array_get(arch, 0)) &&
            strcmp(json_string_value(json_array_get(arch, 0)), "LlamaForCausalLM") == 0)
            model_type = "llama";
    }
    if (!model_type)
        return lorad_error_set(err, -EINVAL, "model_type", "%s: no \"model_type\" (expected \"llama\")", source);
    if (strcmp(model_type, "qwen2") == 0)
        cfg->attention_bias = true;
    else if (strcmp(model_type, "llama") != 0 && strcmp(model_type, "mistral") != 0)
        return lorad_error_set(err, -EINVAL, "model_type",
                               "%s: model_type \"%s\" is not supported (llama, mistral, qwen2)", source, model_type);
    int r;
    if ((r = get_int(root, "hidden_size", &cfg->dim, 1, 1, LORAD_MAX_DIM, source, err)) < 0) return r;
    if ((r = get_int(root, "intermediate_size", &cfg->hidden_dim, 1, 1, LORAD_MAX_HIDDEN_DIM, source, err)) < 0) return r;
    if ((r = get_int(root, "num_hidden_layers", &cfg->n_layers, 1, 1, LORAD_MAX_LAYERS, source, err)) < 0) return r;
    if ((r = get_int(root, "num_attention_heads", &cfg->n_heads, 1, 1, LORAD_MAX_HEADS, source, err)) < 0) return r;
    cfg->n_kv_heads = cfg->n_heads;
    if ((r = get_int(root, "num_key_value_heads", &cfg->n_kv_heads, 0, 1, LORAD_MAX_HEADS, source, err)) < 0) return r;
    cfg->head_dim = cfg->dim / cfg->n_heads;
    if ((r = get_int(root, "head_dim", &cfg->head_dim, 0, 1, LORAD_MAX_HEAD_DIM, source, err)) < 0) return r;
    if ((r = get_int(root, "vocab_size", &cfg->vocab_size, 1, 1, LORAD_MAX_VOCAB, source, err)) < 0) return r;
    if ((r = get_int(root, "max_position_embeddings", &cfg->max_seq_len, 0, 1, LORAD_MAX_SEQ_LEN, source, err)) < 0)
        return r;
    if ((r = get_float(root, "rms_norm_eps", &cfg->norm_eps, source, err)) < 0) return r;
    if ((r = get_float(root, "rope_theta", &cfg->rope_theta, source, err)) < 0) return r;
    if ((r = parse_rope(root, cfg, source, err)) < 0) return r;
    if ((r = get_bool(root, "tie_word_embeddings", &cfg->tie_embeddings, source, err)) < 0) return r;
    if ((r = get_bool(root, "attention_bias", &cfg->attention_bias, source, err)) < 0) return r;
    if ((r = get_token_id(root, "bos_token_id", &cfg->bos_id, source, err)) < 0) return r;
    if ((r = get_token_id(root, "eos_token_id", &cfg->eos_id, source, err)) < 0) return r;
    struct lorad_error verr = {0};
    if ((r = lorad_llama_config_validate(cfg, &verr)) < 0)
        return lorad_error_set(err, r, verr.param, "%s: %s", source, verr.message);
    return 0;
}

int lorad_hf_config_parse(const char *text, size_t len, const char *source, struct lorad_llama_config *ret_cfg,
                          struct lorad_error *err) {
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return lorad_error_set(err, -EINVAL, "config", "%s: invalid JSON at line %d: %s", source, jerr.line, jerr.text);
    struct lorad_llama_config cfg;
    int r = parse_config(root, &cfg, source, err);
    json_decref(root);
    if (r == 0) *ret_cfg = cfg;
    return r;
}

static char *join(const char *dir, const char *name) {
    char *p = NULL;
    return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

int lorad_hf_config_load(const char *dir, struct lorad_llama_config *ret_cfg, struct lorad_error *err) {
    char *path = join(dir, "config.json"), *text = NULL;
    size_t len = 0;
    if (!path) return lorad_error_set(err, -ENOMEM, "model", "out of memory");
    int r = read_small_file(path, &text, &len, err);
    if (r == 0) r = lorad_hf_config_parse(text, len, path, ret_cfg, err);
    free(text);
    free(path);
    return r;
}

/* The set of safetensors files of one model and where each tensor lives. */
struct hf_files {
    struct lorad_st_file **files;
    size_t n_files;
    json_t *weight_map; /* NULL for a single model.safetensors */
};

static void close_st(void *f) { lorad_st_close(f); }

static int open_shard(struct hf_files *hf, struct lorad_load_owner *o, const char *path, struct lorad_error *err) {
    struct lorad_st_file *f;
    int r = lorad_st_open(path, &f, err);
    if (r < 0) return r;
    if ((r = lorad_load_owner_attach(o, close_st, f)) < 0) return lorad_error_set(err, r, "model", "out of memory");
    hf->files[hf->n_files++] = f;
    return 0;
}

static int shard_name_ok(const char *name) {
    return name[0] && name[0] != '.' && !strchr(name, '/') && strlen(name) < 256;
}

static int open_files(const char *dir, struct hf_files *hf, struct lorad_load_owner *o, struct lorad_error *err) {
    char *single = join(dir, "model.safetensors"), *index = join(dir, "model.safetensors.index.json");
    int r = 0;
    if (!single || !index) {
        r = lorad_error_set(err, -ENOMEM, "model", "out of memory");
        goto out;
    }
    if (access(single, F_OK) == 0) {
        hf->files = calloc(1, sizeof *hf->files);
        r = hf->files ? open_shard(hf, o, single, err) : lorad_error_set(err, -ENOMEM, "model", "out of memory");
        goto out;
    }
    if (access(index, F_OK) != 0) {
        r = lorad_error_set(err, -ENOENT, "model", "%s: neither model.safetensors nor model.safetensors.index.json found", dir);
        goto out;
    }
    char *text = NULL;
    size_t len = 0;
    if ((r = read_small_file(index, &text, &len, err)) < 0) goto out;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) {
        r = lorad_error_set(err, -EINVAL, "model", "%s: invalid JSON at line %d: %s", index, jerr.line, jerr.text);
        goto out;
    }
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        json_decref(root);
        r = lorad_error_set(err, -EINVAL, "weight_map", "%s: missing object \"weight_map\"", index);
        goto out;
    }
    hf->weight_map = json_incref(wm);
    json_decref(root);
    /* Distinct shard names, each opened once. */
    const char *key;
    json_t *v;
    size_t n = 0;
    json_object_foreach(wm, key, v) {
        if (!json_is_string(v) || !shard_name_ok(json_string_value(v))) {
            r = lorad_error_set(err, -EINVAL, "weight_map", "%s: weight_map entry of %s is not a file name in the directory",
                                index, key);
            goto out;
        }
        n++;
    }
    hf->files = calloc(n ? n : 1, sizeof *hf->files);
    const char **names = calloc(n ? n : 1, sizeof *names);
    if (!hf->files || !names) {
        free(names);
        r = lorad_error_set(err, -ENOMEM, "model", "out of memory");
        goto out;
    }
    size_t n_names = 0;
    json_object_foreach(wm, key, v) {
        const char *s = json_string_value(v);
        size_t i = 0;
        while (i < n_names && strcmp(names[i], s) != 0) i++;
        if (i == n_names) names[n_names++] = s;
    }
    if (n_names > MAX_SHARDS) r = lorad_error_set(err, -EINVAL, "weight_map", "%s: more than %d shards", index, MAX_SHARDS);
    for (size_t i = 0; i < n_names && r == 0; i++) {
        char *p = join(dir, names[i]);
        r = p ? open_shard(hf, o, p, err) : lorad_error_set(err, -ENOMEM, "model", "out of memory");
        free(p);
    }
    free(names);
out:
    free(single);
    free(index);
    return r;
}

static const struct lorad_st_tensor *find_tensor(const struct hf_files *hf, const char *name,
                                                 const struct lorad_st_file **ret_file) {
    const char *shard = NULL;
    if (hf->weight_map) {
        shard = json_string_value(json_object_get(hf->weight_map, name));
        if (!shard) return NULL;
    }
    for (size_t i = 0; i < hf->n_files; i++) {
        const char *p = lorad_st_path(hf->files[i]);
        const char *base = strrchr(p, '/');
        base = base ? base + 1 : p;
        if (shard && strcmp(base, shard) != 0) continue;
        const struct lorad_st_tensor *t = lorad_st_find(hf->files[i], name);
        if (t) {
            *ret_file = hf->files[i];
            return t;
        }
    }
    return NULL;
}

/* Finds name and makes *dst a (rows, cols) view; vectors (rows == 1) are 1-D [cols] in HF files. */
static int load_tensor(const struct hf_files *hf, struct lorad_load_owner *o, const char *dir, const char *name,
                       int64_t rows, int64_t cols, struct lorad_tensor *dst, struct lorad_error *err) {
    const struct lorad_st_file *f = NULL;
    const struct lorad_st_tensor *t = find_tensor(hf, name, &f);
    if (!t)
        return lorad_error_set(err, -EINVAL, name, "%s: missing tensor %s, expected shape [%lld, %lld]%s", dir, name,
                               (long long)rows, (long long)cols, hf->weight_map ? " (per weight_map)" : "");
    int shape_ok = rows == 1 ? (t->ndim == 1 && t->shape[0] == cols)
                             : (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols);
    if (!shape_ok) {
        char got[128] = "";
        size_t off = 0;
        for (int d = 0; d < t->ndim && off < sizeof got - 24; d++)
            off += (size_t)snprintf(got + off, sizeof got - off, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        if (rows == 1)
            return lorad_error_set(err, -EINVAL, name, "%s: tensor %s has shape [%s], expected [%lld]",
                                   lorad_st_path(f), name, got, (long long)cols);
        return lorad_error_set(err, -EINVAL, name, "%s: tensor %s has shape [%s], expected [%lld, %lld]",
                               lorad_st_path(f), name, got, (long long)rows, (long long)cols);
    }
    enum lorad_src_type type;
    if (strcmp(t->dtype, "F32") == 0) type = LORAD_SRC_F32;
    else if (strcmp(t->dtype, "BF16") == 0) type = LORAD_SRC_BF16;
    else if (strcmp(t->dtype, "F16") == 0) type = LORAD_SRC_F16;
    else
        return lorad_error_set(err, -EINVAL, name, "%s: tensor %s has dtype %s; supported are F32, BF16, F16",
                               lorad_st_path(f), name, t->dtype);
    int r = lorad_load_import(o, dst, type, t->data, rows, cols, 0);
    return r < 0 ? lorad_error_set(err, r, "model", "out of memory loading %s", name) : 0;
}

static int load_weights(const char *dir, const struct hf_files *hf, struct lorad_load_owner *o,
                        struct lorad_base_weights *w, struct lorad_error *err) {
    const struct lorad_llama_config *c = &w->cfg;
    int r;
    if ((r = load_tensor(hf, o, dir, "model.embed_tokens.weight", c->vocab_size, c->dim, &w->embed, err)) < 0) return r;
    if ((r = load_tensor(hf, o, dir, "model.norm.weight", 1, c->dim, &w->final_norm, err)) < 0) return r;
    if (c->tie_embeddings) {
        w->lm_head = w->embed;
    } else {
        const struct lorad_st_file *f;
        if (!find_tensor(hf, "lm_head.weight", &f))
            return lorad_error_set(err, -EINVAL, "lm_head.weight",
                                   "%s: missing tensor lm_head.weight, expected shape [%d, %d] "
                                   "(config.json says tie_word_embeddings is false)", dir, c->vocab_size, c->dim);
        if ((r = load_tensor(hf, o, dir, "lm_head.weight", c->vocab_size, c->dim, &w->lm_head, err)) < 0) return r;
    }
    struct lorad_layer_tensor_spec specs[LORAD_LAYER_MAX_TENSORS];
    int n = lorad_layer_tensor_specs(c, specs);
    for (int l = 0; l < c->n_layers; l++) {
        for (int i = 0; i < n; i++) {
            char name[128];
            snprintf(name, sizeof name, "model.layers.%d.%s", l, specs[i].hf_suffix);
            struct lorad_tensor *t = lorad_layer_tensor(&w->layers[l], &specs[i]);
            if ((r = load_tensor(hf, o, dir, name, specs[i].rows, specs[i].cols, t, err)) < 0) return r;
        }
    }
    return 0;
}

int lorad_load_hf_dir(const char *dir, enum lorad_load_mode mode, struct lorad_base_weights *ret_w,
                      struct lorad_error *err) {
    struct lorad_base_weights w = {0};
    int r = lorad_hf_config_load(dir, &w.cfg, err);
    if (r < 0) return r;
    struct lorad_load_owner *o = lorad_load_owner_new(w.cfg.n_layers, mode);
    if (!o) return lorad_error_set(err, -ENOMEM, "model", "out of memory");
    lorad_load_owner_install(o, &w);
    struct hf_files hf = {0};
    r = open_files(dir, &hf, o, err);
    if (r == 0) r = load_weights(dir, &hf, o, &w, err);
    if (r == 0) r = lorad_base_weights_validate(&w, err);
    free(hf.files);
    json_decref(hf.weight_map);
    if (r < 0) {
        lorad_base_weights_release(&w);
        return r;
    }
    *ret_w = w;
    return 0;
}
