/* HF tokenizer.json: not implemented yet. The loader refuses clearly so callers can tell the
 * user; the encoders exist only as the dispatch targets for when it is. */
#include <errno.h>

#include "tok_internal.h"

int tok_load_hf_json(struct lorad_tokenizer **ret, const char *json, size_t len, const char *name,
                     const char *config_json, size_t config_len, const char *config_name,
                     struct lorad_error *err) {
    (void)ret, (void)json, (void)len, (void)config_json, (void)config_len, (void)config_name;
    return lorad_error_set(err, -ENOTSUP, name, "%s: HF tokenizer.json is not supported yet "
                           "(use tokenizer.model or tokenizer.bin)", name);
}

int tok_hf_spm_encode(const struct lorad_tokenizer *t, const char *text, size_t len, bool at_start,
                      struct tok_ids *out) {
    (void)t, (void)text, (void)len, (void)at_start, (void)out;
    return -ENOTSUP;
}

int tok_byte_level_encode(const struct lorad_tokenizer *t, const char *text, size_t len, struct tok_ids *out) {
    (void)t, (void)text, (void)len, (void)out;
    return -ENOTSUP;
}
