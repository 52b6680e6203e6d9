/* A Hugging Face model directory as the loader probes it: the input is config.json, NUL,
 * model.safetensors.index.json, NUL, the shard model-00001-of-00001.safetensors it may name
 * (each part may be empty). Covers config.json, the index JSON and the shard's header together. */
#include <errno.h>
#include <sys/stat.h>

#include "fuzz_common.h"
#include "load_common.h"
#include "load_hf.h"

static char dir[64];

static void put(const char *name, const uint8_t *data, size_t size) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/lorad-fuzz-hf-%d", (int)getpid());
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) abort();
    }
    const uint8_t *config, *rest, *index, *shard;
    size_t n_config, n_rest, n_index, n_shard;
    fuzz_split(data, size, &config, &n_config, &rest, &n_rest);
    fuzz_split(rest, n_rest, &index, &n_index, &shard, &n_shard);
    put("config.json", config, n_config);
    put("model.safetensors.index.json", index, n_index);
    put("model-00001-of-00001.safetensors", shard, n_shard);
    struct lorad_base_weights w;
    struct lorad_error err = {0};
    if (lorad_load_hf_dir(dir, LORAD_LOAD_PROBE, &w, &err) == 0) lorad_base_weights_release(&w);
    return 0;
}
