/* lorad export --adapter DIR|FILE --format peft|gguf|merged --out PATH [--model PATH]
 *
 *   peft    re-writes the adapter as a PEFT directory (from a PEFT dir, an adapter.tar or a GGUF LoRA);
 *   gguf    writes a llama.cpp LoRA GGUF (needs the base config for the q/k RoPE row order);
 *   merged  writes a Hugging Face directory with W + scale * B @ A folded into the base:
 *           config.json, model.safetensors (the base's dtype for an HF base, F32 for GGUF and
 *           llama2.c bases) and the base's tokenizer files when it is an HF directory.
 * --adapter is a PEFT directory, an adapter.tar (as the API serves it) or a GGUF LoRA. The base
 * comes from --model, else from the adapter's base_model_name_or_path when that is a readable path.
 * A tied base whose lm_head is adapted is written untied (lm_head.weight and tie_word_embeddings
 * false), since the merged head no longer equals the embeddings. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapter_read.h"
#include "cli.h"
#include "fsutil.h"
#include "merge.h"
#include "model_file.h"

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "lorad export: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    lorad_command_print_usage(lorad_command_find("export"), stderr);
    return LORAD_EXIT_USAGE;
}

static int fail(const struct lorad_error *err) {
    fprintf(stderr, "lorad export: %s\n", err->message);
    return LORAD_EXIT_FAILURE;
}

/* Writes len bytes to path, whole or not at all. */
static int write_file_atomic(const char *path, const void *data, size_t len, struct lorad_error *err) {
    int r = lorad_atomic_write_file(path, data, len);
    if (r < 0) return lorad_error_set(err, r, "", "cannot write %s: %s", path, strerror(-r));
    return 0;
}

/* Copies dir/name to out/name if it exists; a missing file is not an error. */
static int copy_if_present(const char *dir, const char *out, const char *name, struct lorad_error *err) {
    char src[4096], dst[4096];
    snprintf(src, sizeof src, "%s/%s", dir, name);
    snprintf(dst, sizeof dst, "%s/%s", out, name);
    FILE *f = fopen(src, "rbe");
    if (!f) return errno == ENOENT ? 0 : lorad_error_set(err, -errno, "", "cannot read %s: %s", src, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int r = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? 2 * cap : 1 << 16;
            if (cap > (1u << 30)) {
                r = lorad_error_set(err, -EFBIG, "", "%s: larger than 1 GiB", src);
                break;
            }
            char *p = realloc(buf, cap);
            if (!p) {
                r = lorad_error_set(err, -ENOMEM, "", "out of memory reading %s", src);
                break;
            }
            buf = p;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) r = lorad_error_set(err, -EIO, "", "cannot read %s", src);
            break;
        }
    }
    fclose(f);
    if (r == 0) r = write_file_atomic(dst, buf, len, err);
    free(buf);
    return r;
}

/* The shortest decimal that reads back as f, so an eps stored as f32 1e-5 is written 1e-05
 * rather than 9.9999997473787516e-06. */
static json_t *json_float32(float f) {
    char text[32];
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(text, sizeof text, "%.*g", digits, (double)f);
        if ((float)strtod(text, NULL) == f) break;
    }
    return json_real(strtod(text, NULL));
}

/* config.json of the merged model: the HF base's own file (untied if needed, torch_dtype the
 * written dtype), or one synthesised from the config of a GGUF / llama2.c base. */
static json_t *merged_config(const struct lorad_model_file *mf, bool untie, const char *torch_dtype,
                             struct lorad_error *err) {
    const struct lorad_llama_config *c = &mf->weights.cfg;
    json_t *root;
    if (mf->format == LORAD_FORMAT_HF_DIR) {
        char path[4096];
        snprintf(path, sizeof path, "%s/config.json", mf->path);
        json_error_t jerr;
        root = json_load_file(path, 0, &jerr);
        if (!root || !json_is_object(root)) {
            json_decref(root);
            lorad_error_set(err, -EINVAL, "", "%s: %s", path, jerr.text);
            return NULL;
        }
    } else {
        json_t *scaling = json_null();
        if (c->rope_scaling.type == LORAD_ROPE_LLAMA3)
            scaling = json_pack("{s:s, s:o, s:o, s:o, s:i}", "rope_type", "llama3", "factor",
                                json_float32(c->rope_scaling.factor), "low_freq_factor",
                                json_float32(c->rope_scaling.low_freq_factor), "high_freq_factor",
                                json_float32(c->rope_scaling.high_freq_factor), "original_max_position_embeddings",
                                c->rope_scaling.original_max_position_embeddings);
        root = json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:o, s:o, s:o, s:b, s:b, s:s}",
                         "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size", c->dim,
                         "intermediate_size", c->hidden_dim, "num_hidden_layers", c->n_layers, "num_attention_heads",
                         c->n_heads, "num_key_value_heads", c->n_kv_heads, "head_dim", c->head_dim, "vocab_size",
                         c->vocab_size, "max_position_embeddings", c->max_seq_len, "rms_norm_eps", json_float32(c->norm_eps),
                         "rope_theta", json_float32(c->rope_theta), "rope_scaling", scaling, "tie_word_embeddings",
                         (int)c->tie_embeddings, "attention_bias", (int)c->attention_bias, "hidden_act", "silu");
        if (root && c->bos_id >= 0) json_object_set_new(root, "bos_token_id", json_integer(c->bos_id));
        if (root && c->eos_id >= 0) json_object_set_new(root, "eos_token_id", json_integer(c->eos_id));
    }
    if (!root) {
        lorad_error_set(err, -ENOMEM, "", "out of memory building config.json");
        return NULL;
    }
    if (untie) json_object_set_new(root, "tie_word_embeddings", json_false());
    json_object_set_new(root, "torch_dtype", json_string(torch_dtype));
    return root;
}

static int export_merged(const char *out, const struct lorad_model_file *mf, const struct lorad_adapter *ad,
                         struct lorad_error *err) {
    int r = lorad_mkdir_p(out);
    if (r < 0) return lorad_error_set(err, r, "", "cannot create %s: %s", out, strerror(-r));
    bool keep_dtype = mf->format == LORAD_FORMAT_HF_DIR;
    const char *torch_dtype = keep_dtype && mf->weights.layers[0].wq.dtype == LORAD_DTYPE_BF16 ? "bfloat16" : "float32";
    char path[4096];
    if (snprintf(path, sizeof path, "%s/model.safetensors", out) >= (int)sizeof path)
        return lorad_error_set(err, -ENAMETOOLONG, "", "path too long: %s", out);
    if ((r = lorad_merge_write_safetensors(path, &mf->weights, ad, keep_dtype, err)) < 0) return r;
    json_t *cfg = merged_config(mf, lorad_merge_unties_head(&mf->weights, ad), torch_dtype, err);
    if (!cfg) return -EINVAL;
    /* A synthesised config holds f32 values, which 9 significant digits print exactly; an HF
     * base's own values keep jansson's full double precision. */
    size_t precision = mf->format == LORAD_FORMAT_HF_DIR ? 0 : JSON_REAL_PRECISION(9);
    char *text = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER | precision);
    json_decref(cfg);
    if (!text) return lorad_error_set(err, -ENOMEM, "", "out of memory writing config.json");
    snprintf(path, sizeof path, "%s/config.json", out);
    r = write_file_atomic(path, text, strlen(text), err);
    free(text);
    if (r < 0 || mf->format != LORAD_FORMAT_HF_DIR) return r;
    static const char *const tokenizer_files[] = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                                  "special_tokens_map.json", "generation_config.json"};
    for (size_t i = 0; r == 0 && i < sizeof tokenizer_files / sizeof tokenizer_files[0]; i++)
        r = copy_if_present(mf->path, out, tokenizer_files[i], err);
    return r;
}

int lorad_cmd_export(int argc, char **argv) {
    static const struct option options[] = {
        {"adapter", required_argument, NULL, 'a'}, {"format", required_argument, NULL, 'f'},
        {"out", required_argument, NULL, 'o'},     {"model", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    const char *adapter_path = NULL, *format = NULL, *out = NULL, *model = NULL;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (c) {
        case 'a': adapter_path = optarg; break;
        case 'f': format = optarg; break;
        case 'o': out = optarg; break;
        case 'm': model = optarg; break;
        case 'h': lorad_command_print_usage(lorad_command_find("export"), stdout); return LORAD_EXIT_OK;
        case ':': return usage_error("%s needs a value", argv[optind - 1]);
        default: return usage_error("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc) return usage_error("unexpected argument %s", argv[optind]);
    if (!adapter_path) return usage_error("%s is required", "--adapter");
    if (!out) return usage_error("%s is required", "--out");
    if (!format) return usage_error("%s is required", "--format");
    if (strcmp(format, "peft") != 0 && strcmp(format, "gguf") != 0 && strcmp(format, "merged") != 0)
        return usage_error("unknown format '%s' (peft, gguf or merged)", format);

    struct lorad_error err = {0};
    /* The base: --model, else a readable base_model_name_or_path of a PEFT adapter. */
    char base_from_config[sizeof ((struct lorad_adapter_meta *)0)->base_model] = "";
    struct lorad_adapter *probe = NULL;
    /* Without a base only the structure is checked; a GGUF adapter fails here, and it carries no
     * base path anyway. Works alike for a PEFT dir and an adapter.tar. */
    if (!model && lorad_adapter_load(adapter_path, NULL, &probe, &err) == 0 && probe->meta.base_model[0] &&
        access(probe->meta.base_model, R_OK) == 0) {
        snprintf(base_from_config, sizeof base_from_config, "%s", probe->meta.base_model);
        model = base_from_config;
    }
    if (model) { /* it is loaded again below, checked against the base */
        lorad_adapter_free(probe);
        probe = NULL;
    }
    lorad_error_clear(&err);
    if (!model && strcmp(format, "peft") != 0) {
        fprintf(stderr,
                "lorad export: %s: --format %s needs the base model: pass --model PATH (the adapter's "
                "base_model_name_or_path is not a readable path)\n",
                adapter_path, format);
        lorad_adapter_free(probe);
        return LORAD_EXIT_FAILURE;
    }
    struct lorad_model_file *mf = NULL;
    if (model && lorad_model_file_open(model, &mf, &err) < 0) return fail(&err);
    /* Without a base the probe already is that load (same path, no config). */
    struct lorad_adapter *ad = probe;
    int rc = ad ? 0 : lorad_adapter_load(adapter_path, mf ? &mf->weights.cfg : NULL, &ad, &err);
    if (rc == 0) {
        if (strcmp(format, "peft") == 0) {
            if (!ad->meta.base_model[0] && model)
                snprintf(ad->meta.base_model, sizeof ad->meta.base_model, "%s", model);
            rc = lorad_adapter_write_peft(out, &ad->meta, ad->tensors, ad->n_tensors, &err);
        } else if (strcmp(format, "gguf") == 0) {
            rc = lorad_adapter_write_gguf(out, &ad->meta, ad->tensors, ad->n_tensors, &mf->weights.cfg, &err);
        } else {
            rc = export_merged(out, mf, ad, &err);
        }
    }
    lorad_adapter_free(ad);
    lorad_model_file_close(mf);
    if (rc < 0) return fail(&err);
    printf("lorad export: wrote %s (%s)\n", out, format);
    return LORAD_EXIT_OK;
}
