/* lorad tokenize: not built yet (see the issue that owns it). */
#include "cli.h"

int lorad_cmd_tokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return lorad_not_implemented("tokenize");
}
