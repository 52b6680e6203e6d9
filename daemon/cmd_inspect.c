/* lorad inspect: not built yet (see the issue that owns it). */
#include "cli.h"

int lorad_cmd_inspect(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return lorad_not_implemented("inspect");
}
