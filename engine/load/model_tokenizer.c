#include "model_tokenizer.h"

#include <errno.h>
#include <stdio.h>

/* Contract: mf is borrowed; the tokenizer is the caller's on success. */
int lorad_model_file_tokenizer(const struct lorad_model_file *mf, const char *override_path,
                               struct lorad_tokenizer **ret, struct lorad_error *err) {
    const char *param = override_path ? "tokenizer" : "model";
    struct lorad_tokenizer *tok = NULL;
    int rc = 0;
    if (override_path) rc = lorad_tokenizer_load(&tok, override_path, err);
    else if (mf->has_vocab) rc = lorad_tokenizer_from_vocab(&tok, &mf->vocab, err);
    else if (mf->tokenizer_path) rc = lorad_tokenizer_load(&tok, mf->tokenizer_path, err);
    if (rc < 0) {
        snprintf(err->param, sizeof err->param, "%s", param);
        return rc;
    }
    int pieces = tok ? lorad_tokenizer_vocab_size(tok) : 0;
    if (pieces > mf->weights.cfg.vocab_size) {
        lorad_tokenizer_free(tok);
        return lorad_error_set(err, -EINVAL, param,
                               "%s: the tokenizer has %d pieces but the model only %d (a tokenizer of another model?)",
                               mf->path, pieces, mf->weights.cfg.vocab_size);
    }
    *ret = tok;
    return 0;
}
