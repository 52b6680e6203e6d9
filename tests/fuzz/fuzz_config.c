/* The daemon's config file (name = value lines, errors naming PATH:LINE), on top of the defaults. */
#include "config.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_file(data, size, path);
    struct lorad_config cfg;
    lorad_config_defaults(&cfg);
    struct lorad_error err = {0};
    lorad_config_load_file(&cfg, path, false, &err);
    close(fd);
    return 0;
}
