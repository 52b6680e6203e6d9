/* lorad_tokenizer_load: reads the file (bounded), detects its format from the content, and hands
 * it to the matching loader; lorad_tokenizer_from_vocab for GGUF's in-memory vocabulary. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tok_internal.h"

static int read_file(const char *path, uint8_t **ret, size_t *ret_len, struct lorad_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lorad_error_set(err, -errno, path, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return lorad_error_set(err, -EINVAL, path, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > LORAD_TOKENIZER_MAX_FILE) {
        close(fd);
        return lorad_error_set(err, -E2BIG, path, "%s: %lld bytes exceeds the tokenizer file limit of %u", path,
                               (long long)st.st_size, LORAD_TOKENIZER_MAX_FILE);
    }
    size_t len = (size_t)st.st_size;
    uint8_t *buf = malloc(len + 1);
    if (!buf) {
        close(fd);
        return lorad_error_set(err, -ENOMEM, path, "%s: out of memory", path);
    }
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return lorad_error_set(err, -e, path, "%s: read failed: %s", path, strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    *ret = buf;
    *ret_len = len;
    return 0;
}

static bool looks_like_json(const uint8_t *d, size_t n) {
    size_t i = 0;
    while (i < n && (d[i] == ' ' || d[i] == '\n' || d[i] == '\r' || d[i] == '\t')) i++;
    return i < n && d[i] == '{';
}

static int load_file(struct lorad_tokenizer **ret, const char *path, const char *config_path,
                     struct lorad_error *err) {
    uint8_t *data;
    size_t len;
    int rc = read_file(path, &data, &len, err);
    if (rc < 0) return rc;
    if (len >= 4 && memcmp(data, "GGUF", 4) == 0) {
        rc = lorad_error_set(err, -ENOTSUP, path, "%s: is a GGUF file; its embedded vocabulary is read by the GGUF "
                             "loader (lorad_tokenizer_from_vocab), not yet wired here", path);
    } else if (looks_like_json(data, len)) {
        uint8_t *cfg = NULL;
        size_t cfg_len = 0;
        if (config_path && access(config_path, R_OK) == 0 && (rc = read_file(config_path, &cfg, &cfg_len, err)) < 0) {
            free(data);
            return rc;
        }
        rc = tok_load_hf_json(ret, (const char *)data, len, path, (const char *)cfg, cfg_len, config_path, err);
        free(cfg);
    } else if (len >= 2 && data[0] == 0x0A) {
        /* ModelProto starts with field 1 (pieces), length-delimited: tag byte 0x0A. */
        rc = tok_load_spm_model(ret, data, len, path, err);
    } else {
        rc = tok_load_llama2c_bin(ret, data, len, path, err);
    }
    free(data);
    return rc;
}

int lorad_tokenizer_load(struct lorad_tokenizer **ret, const char *path, struct lorad_error *err) {
    struct stat st;
    if (stat(path, &st) < 0) return lorad_error_set(err, -errno, path, "%s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        char *dir = strdup(path);
        if (!dir) return lorad_error_set(err, -ENOMEM, path, "out of memory");
        char *slash = strrchr(dir, '/');
        char *config = NULL;
        int rc;
        if (asprintf(&config, "%s/tokenizer_config.json", slash ? (*slash = '\0', dir[0] ? dir : "/") : ".") < 0)
            rc = lorad_error_set(err, -ENOMEM, path, "out of memory");
        else
            rc = load_file(ret, path, config, err);
        free(config);
        free(dir);
        return rc;
    }
    static const char *const names[] = {"tokenizer.json", "tokenizer.model", "tokenizer.bin"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *file = NULL, *config = NULL;
        if (asprintf(&file, "%s/%s", path, names[i]) < 0) return lorad_error_set(err, -ENOMEM, path, "out of memory");
        if (access(file, F_OK) != 0) {
            free(file);
            continue;
        }
        int rc = asprintf(&config, "%s/tokenizer_config.json", path) < 0
                     ? lorad_error_set(err, -ENOMEM, path, "out of memory")
                     : load_file(ret, file, config, err);
        free(config);
        free(file);
        return rc;
    }
    return lorad_error_set(err, -ENOENT, path, "%s: directory has no tokenizer.json, tokenizer.model or tokenizer.bin "
                           "(a GGUF model's vocabulary is not read here yet)", path);
}

/* tokenizer.ggml.pre of a "gpt2" vocabulary: which pre-tokenizer the model was trained with. */
static int read_gguf_pre(struct lorad_tokenizer *t, const char *pre, struct lorad_error *err) {
    if (!pre || strcmp(pre, "default") == 0 || strcmp(pre, "gpt2") == 0) {
        t->pretok = TOK_PRETOK_GPT2;
    } else if (strcmp(pre, "llama-bpe") == 0 || strcmp(pre, "llama3") == 0) {
        t->pretok = TOK_PRETOK_LLAMA3;
        t->ignore_merges = true; /* as Llama 3's tokenizer.json says */
    } else if (strcmp(pre, "smollm") == 0) {
        t->pretok = TOK_PRETOK_GPT2;
        t->split_digits = true;
    } else {
        return lorad_error_set(err, -ENOTSUP, "tokenizer.ggml.pre", "tokenizer.ggml.pre '%s' is not supported "
                               "(only default, gpt2, llama-bpe, llama3, smollm)", pre);
    }
    return 0;
}

/* The "gpt2" part after the pieces are set: merges "left right" in rank order. */
static int read_gguf_merges(struct lorad_tokenizer *t, const struct lorad_vocab_arrays *v, struct lorad_error *err) {
    const char *name = "tokenizer.ggml.merges";
    if (v->n_merges < 0 || v->n_merges > LORAD_TOKENIZER_MAX_VOCAB || (v->n_merges && !v->merges))
        return lorad_error_set(err, -EINVAL, name, "%d merges is not in 0..%d", v->n_merges, LORAD_TOKENIZER_MAX_VOCAB);
    if (tok_pair_map_init(&t->merges, (size_t)v->n_merges) < 0)
        return lorad_error_set(err, -ENOMEM, name, "out of memory");
    for (int i = 0; i < v->n_merges; i++) {
        const char *m = v->merges[i] ? v->merges[i] : "";
        size_t len = strnlen(m, 2 * LORAD_TOKENIZER_MAX_PIECE + 2);
        const char *sp = len > 1 ? memchr(m + 1, ' ', len - 1) : NULL; /* the left piece is never empty */
        size_t ll = sp ? (size_t)(sp - m) : 0, rl = sp ? len - ll - 1 : 0;
        if (!sp || ll > LORAD_TOKENIZER_MAX_PIECE || rl > LORAD_TOKENIZER_MAX_PIECE || rl == 0)
            return lorad_error_set(err, -EINVAL, name, "merge %d is not \"left right\"", i);
        if (tok_add_merge(t, m, ll, sp + 1, rl, i) < 0)
            return lorad_error_set(err, -EINVAL, name, "merge %d '%.*s' '%.*s' uses a token missing from the "
                                   "vocabulary", i, (int)ll, m, (int)rl, sp + 1);
    }
    return 0;
}

int lorad_tokenizer_from_vocab(struct lorad_tokenizer **ret, const struct lorad_vocab_arrays *v,
                               struct lorad_error *err) {
    const char *name = "tokenizer.ggml";
    if (!v->model || !v->tokens) return lorad_error_set(err, -EINVAL, "tokenizer.ggml.model", "missing model or tokens");
    bool gpt2 = strcmp(v->model, "gpt2") == 0;
    if (!gpt2 && strcmp(v->model, "llama") != 0)
        return lorad_error_set(err, -ENOTSUP, "tokenizer.ggml.model", "tokenizer model '%s' is not supported "
                               "(only 'llama' SentencePiece BPE and 'gpt2' byte-level BPE)", v->model);
    if (v->n_tokens <= 0 || v->n_tokens > LORAD_TOKENIZER_MAX_VOCAB)
        return lorad_error_set(err, -EINVAL, "tokenizer.ggml.tokens", "%d tokens is not in 1..%d", v->n_tokens,
                               LORAD_TOKENIZER_MAX_VOCAB);
    struct lorad_tokenizer *t;
    int rc = tok_alloc(&t, v->n_tokens);
    if (rc < 0) return lorad_error_set(err, rc, name, "out of memory");
    t->kind = gpt2 ? LORAD_TOKENIZER_BYTE_LEVEL : LORAD_TOKENIZER_SPM_BPE;
    if (gpt2 && (rc = read_gguf_pre(t, v->pre, err)) < 0) goto fail;
    int n_bytes = 0;
    for (int i = 0; i < v->n_tokens; i++) {
        const char *s = v->tokens[i] ? v->tokens[i] : "";
        size_t len = strnlen(s, LORAD_TOKENIZER_MAX_PIECE + 1);
        if (len > LORAD_TOKENIZER_MAX_PIECE) {
            rc = lorad_error_set(err, -EINVAL, "tokenizer.ggml.tokens", "token %d is longer than %d bytes", i,
                                 LORAD_TOKENIZER_MAX_PIECE);
            goto fail;
        }
        int type = v->token_types ? v->token_types[i] : TOK_NORMAL;
        if (type == TOK_BYTE) n_bytes++;
        if ((rc = tok_set_piece(t, i, s, len, v->scores ? v->scores[i] : 0.0f, type)) < 0) {
            rc = lorad_error_set(err, rc, name, "out of memory");
            goto fail;
        }
    }
    t->bos_id = v->bos_id;
    t->eos_id = v->eos_id;
    t->unk_id = v->unk_id;
    t->pad_id = v->pad_id;
    t->add_eos = v->add_eos == 1;
    if (gpt2) {
        /* llama.cpp's defaults: BOS for Llama 3, none for other byte-level vocabularies. */
        t->add_bos = v->add_bos == 1 || (v->add_bos == -1 && t->pretok == TOK_PRETOK_LLAMA3);
        if ((rc = tok_finish_byte_level(t, name, err)) < 0 || (rc = read_gguf_merges(t, v, err)) < 0) goto fail;
    } else {
        t->byte_fallback = n_bytes == 256;
        t->add_dummy_prefix = true;
        t->add_bos = v->add_bos != 0;
        if ((rc = tok_finish_spm(t, name, err)) < 0) goto fail;
    }
    *ret = t;
    return 0;
fail:
    lorad_tokenizer_free(t);
    return rc;
}
