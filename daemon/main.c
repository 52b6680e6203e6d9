/* lorad: the one binary. All logic lives in the libraries; this file only hands over argv. */
#include "cli.h"

int main(int argc, char **argv) {
    return lorad_main(argc, argv);
}
