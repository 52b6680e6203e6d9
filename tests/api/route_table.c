/* Prints the route table as "METHOD path" lines for check_routes_vs_spec.py. */
#include <stdio.h>

#include "routes.h"

int main(void) {
    for (size_t i = 0; i < lorad_api_n_routes; i++) printf("%s %s\n", lorad_api_routes[i].method, lorad_api_routes[i].path);
    return 0;
}
