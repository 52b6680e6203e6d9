/* A SentencePiece tokenizer.model (protobuf): load, then encode and decode a fixed text with it. */
#define LORAD_FUZZ_TOKENIZER
#include "fuzz_common.h"
#include "tok_internal.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct lorad_tokenizer *t;
    struct lorad_error err = {0};
    if (tok_load_spm_model(&t, data, size, "fuzz.model", &err) != 0) return 0;
    fuzz_round_trip(t);
    lorad_tokenizer_free(t);
    return 0;
}
