/* A llama2.c checkpoint's 28-byte header against a file size (the input's first 8 bytes), and
 * llama2.c's tokenizer.bin (the rest of the input) as the tokenizer loader reads it. */
#define LORAD_FUZZ_TOKENIZER
#include "fuzz_common.h"
#include "load_llama2c.h"
#include "tok_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 8) return 0;
    uint64_t file_size;
    memcpy(&file_size, data, 8);
    data += 8, size -= 8;
    struct lorad_llama_config cfg;
    struct lorad_error err = {0};
    lorad_llama2c_parse_header(data, size < LORAD_LLAMA2C_HEADER_BYTES ? size : LORAD_LLAMA2C_HEADER_BYTES, file_size,
                               "fuzz.bin", &cfg, &err);
    struct lorad_tokenizer *t;
    if (tok_load_llama2c_bin(&t, data, size, "tokenizer.bin", &err) == 0) {
        fuzz_round_trip(t);
        lorad_tokenizer_free(t);
    }
    return 0;
}
