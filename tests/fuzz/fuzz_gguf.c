/* A GGUF file: the header, metadata key/values and tensor infos, then the model loader's probe of
 * it (architecture keys, tensor names, types and shapes) and the tokenizer its tokenizer.ggml.*
 * arrays make, used once. */
#define LORAD_FUZZ_TOKENIZER
#include "fuzz_common.h"
#include "gguf.h"
#include "load_common.h"
#include "load_gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_file(data, size, path);
    struct lorad_gguf *g;
    struct lorad_error err = {0};
    if (lorad_gguf_open(path, &g, &err) == 0) {
        const char *s;
        uint64_t len;
        int64_t v;
        lorad_gguf_get_string(g, "general.architecture", &s, &len, &err);
        lorad_gguf_get_int(g, "llama.block_count", 0, 1 << 20, &v, &err);
        lorad_gguf_close(g);
    }
    struct lorad_base_weights w;
    struct lorad_vocab_arrays v;
    if (lorad_load_gguf(path, LORAD_LOAD_PROBE, &w, &v, &err) == 0) {
        struct lorad_tokenizer *t;
        if (v.n_tokens > 0 && lorad_tokenizer_from_vocab(&t, &v, &err) == 0) {
            fuzz_round_trip(t);
            lorad_tokenizer_free(t);
        }
        lorad_base_weights_release(&w);
    }
    close(fd);
    return 0;
}
