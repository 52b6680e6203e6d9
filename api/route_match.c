#include "route_match.h"

#include <string.h>

bool lorad_route_match(const char *tmpl, const char *path, struct lorad_route_params *ret_params) {
    struct lorad_route_params p = {0};
    const char *t = tmpl, *s = path;
    while (*t && *s) {
        if (*t == '{') {
            const char *close = strchr(t, '}');
            if (!close || p.n == LORAD_ROUTE_MAX_PARAMS) return false;
            size_t name_len = (size_t)(close - t - 1), value_len = strcspn(s, "/");
            if (value_len == 0 || value_len >= LORAD_ROUTE_MAX_PARAM_LEN || name_len >= sizeof p.name[0])
                return false;
            memcpy(p.name[p.n], t + 1, name_len);
            memcpy(p.value[p.n], s, value_len);
            p.n++;
            t = close + 1;
            s += value_len;
        } else {
            if (*t != *s) return false;
            t++;
            s++;
        }
    }
    if (*t || *s) return false;
    if (ret_params) *ret_params = p;
    return true;
}

const char *lorad_route_param(const struct lorad_route_params *p, const char *name) {
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->name[i], name) == 0) return p->value[i];
    return NULL;
}
