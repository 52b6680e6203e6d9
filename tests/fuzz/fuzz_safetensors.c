/* A safetensors file: header JSON, dtypes, shapes and offsets against the file's size; every
 * tensor the parser accepts is looked up by name. */
#include "fuzz_common.h"
#include "safetensors_read.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct lorad_st_file *f;
    struct lorad_error err = {0};
    if (lorad_st_open_mem("fuzz.safetensors", data, size, &f, &err) != 0) return 0;
    for (size_t i = 0; i < lorad_st_n_tensors(f); i++) {
        const struct lorad_st_tensor *t = lorad_st_tensor_at(f, i);
        if (lorad_st_find(f, t->name) == NULL) abort(); /* listed but not found */
    }
    lorad_st_metadata(f, "format");
    lorad_st_close(f);
    return 0;
}
