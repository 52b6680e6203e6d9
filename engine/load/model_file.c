#include "model_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "load_gguf.h"
#include "load_hf.h"
#include "load_llama2c.h"

const char *lorad_model_format_name(enum lorad_model_format format) {
    switch (format) {
    case LORAD_FORMAT_HF_DIR: return "hf";
    case LORAD_FORMAT_GGUF: return "gguf";
    case LORAD_FORMAT_LLAMA2C: return "llama2c";
    }
    return "?";
}

static char *find_tokenizer(const char *dir) {
    static const char *names[] = {"tokenizer.model", "tokenizer.json"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *p = NULL;
        if (asprintf(&p, "%s/%s", dir, names[i]) < 0) return NULL;
        if (access(p, R_OK) == 0) return p;
        free(p);
    }
    return NULL;
}

/* Reads the first bytes of a regular file to tell GGUF from llama2.c. */
static int detect_file(const char *path, const struct stat *st, enum lorad_model_format *ret, struct lorad_error *err) {
    uint8_t head[LORAD_LLAMA2C_HEADER_BYTES] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lorad_error_set(err, -errno, "model", "cannot open %s: %s", path, strerror(errno));
    ssize_t n = pread(fd, head, sizeof head, 0);
    int saved = errno;
    close(fd);
    if (n < 0) return lorad_error_set(err, -saved, "model", "cannot read %s: %s", path, strerror(saved));
    if (n >= 4 && memcmp(head, "GGUF", 4) == 0) {
        *ret = LORAD_FORMAT_GGUF;
        return 0;
    }
    struct lorad_llama_config cfg;
    struct lorad_error herr = {0};
    if (lorad_llama2c_parse_header(head, (size_t)n, (uint64_t)st->st_size, path, &cfg, &herr) == 0) {
        *ret = LORAD_FORMAT_LLAMA2C;
        return 0;
    }
    size_t len = strlen(path);
    if ((len >= 12 && strcmp(path + len - 12, ".safetensors") == 0) || (len >= 11 && strcmp(path + len - 11, "config.json") == 0))
        return lorad_error_set(err, -EINVAL, "model",
                               "%s: a Hugging Face model is loaded from its directory (config.json + safetensors); "
                               "pass the directory", path);
    return lorad_error_set(err, -EINVAL, "model",
                           "%s: not a recognised model file (no GGUF magic; as llama2.c .bin: %s)", path, herr.message);
}

static int open_model(const char *path, enum lorad_load_mode mode, struct lorad_model_file **ret,
                      struct lorad_error *err) {
    struct stat st;
    if (stat(path, &st) < 0) return lorad_error_set(err, -errno, "model", "cannot open %s: %s", path, strerror(errno));
    struct lorad_model_file *mf = calloc(1, sizeof *mf);
    if (!mf || !(mf->path = strdup(path))) {
        free(mf);
        return lorad_error_set(err, -ENOMEM, "model", "out of memory");
    }
    int r;
    if (S_ISDIR(st.st_mode)) {
        mf->format = LORAD_FORMAT_HF_DIR;
        r = lorad_load_hf_dir(path, mode, &mf->weights, err);
        if (r == 0) mf->tokenizer_path = find_tokenizer(path);
    } else if ((r = detect_file(path, &st, &mf->format, err)) == 0) {
        if (mf->format == LORAD_FORMAT_GGUF) {
            r = lorad_load_gguf(path, mode, &mf->weights, &mf->vocab, err);
            mf->has_vocab = r == 0 && mf->vocab.n_tokens > 0;
        } else {
            r = lorad_load_llama2c(path, mode, &mf->weights, err);
        }
    }
    if (r < 0) {
        lorad_model_file_close(mf);
        return r;
    }
    mf->format_name = lorad_model_format_name(mf->format);
    mf->probed = mode == LORAD_LOAD_PROBE;
    const struct lorad_load_owner *o = mf->weights.owner;
    mf->dtypes = o->dtypes;
    mf->n_dtypes = o->n_dtypes;
    mf->mapped_bytes = o->mapped_bytes;
    mf->owned_bytes = o->owned_bytes;
    *ret = mf;
    return 0;
}

int lorad_model_file_open(const char *path, struct lorad_model_file **ret, struct lorad_error *err) {
    return open_model(path, LORAD_LOAD_WEIGHTS, ret, err);
}

int lorad_model_file_probe(const char *path, struct lorad_model_file **ret, struct lorad_error *err) {
    return open_model(path, LORAD_LOAD_PROBE, ret, err);
}

void lorad_model_file_close(struct lorad_model_file *mf) {
    if (!mf) return;
    lorad_base_weights_release(&mf->weights);
    free(mf->tokenizer_path);
    free(mf->path);
    free(mf);
}
