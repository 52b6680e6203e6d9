/* A Hugging Face tokenizer.json, then NUL, then its tokenizer_config.json (absent when there is no
 * NUL): load both, then encode and decode with the result. */
#define LORAD_FUZZ_TOKENIZER
#include "fuzz_common.h"
#include "tok_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *tj, *cfg;
    size_t n_tj, n_cfg;
    fuzz_split(data, size, &tj, &n_tj, &cfg, &n_cfg);
    bool has_cfg = memchr(data, 0, size) != NULL;
    struct lorad_tokenizer *t;
    struct lorad_error err = {0};
    if (tok_load_hf_json(&t, (const char *)tj, n_tj, "tokenizer.json", has_cfg ? (const char *)cfg : NULL, n_cfg,
                         "tokenizer_config.json", &err) != 0)
        return 0;
    fuzz_round_trip(t);
    lorad_tokenizer_free(t);
    return 0;
}
