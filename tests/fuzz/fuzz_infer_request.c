/* The bodies of POST /v1/completions and /v1/chat/completions: the first byte picks the route. */
#include <jansson.h>

#include "fuzz_common.h"
#include "inference_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    enum lorad_api_infer_kind kind = data[0] & 1 ? LORAD_API_INFER_CHAT : LORAD_API_INFER_COMPLETION;
    json_error_t jerr;
    json_t *body = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, &jerr);
    if (!body) return 0;
    struct lorad_api_infer_params p;
    struct lorad_error err = {0};
    if (lorad_api_infer_parse(body, kind, &p, &err) == 0) lorad_api_infer_params_clear(&p);
    json_decref(body);
    return 0;
}
