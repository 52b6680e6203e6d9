/* lorad serve: the daemon. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "config.h"
#include "log.h"

#define LORAD_DEFAULT_CONFIG "/etc/lorad/lorad.conf"

int lorad_cmd_serve(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--print-default-config") == 0) {
        lorad_config_write_defaults(stdout);
        return LORAD_EXIT_OK;
    }
    /* --check-config parses the configuration and flags, reports, and exits (like nginx -t). */
    bool check_only = false;
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && strcmp(argv[i], "--check-config") == 0) check_only = true;
        else argv[n++] = argv[i];
    }
    argc = n;
    struct lorad_config cfg;
    struct lorad_error err = {0};
    lorad_config_defaults(&cfg);
    int r = lorad_config_from_args(&cfg, argc, argv, LORAD_DEFAULT_CONFIG, &err);
    if (r < 0) {
        fprintf(stderr, "lorad serve: %s\n", err.message);
        return LORAD_EXIT_USAGE;
    }
    if (check_only) {
        printf("configuration ok\n");
        return LORAD_EXIT_OK;
    }
    return lorad_not_implemented("serve");
}
