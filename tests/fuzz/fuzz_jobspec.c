/* The job spec (POST /v1/fine_tuning/jobs and lorad train's file): parse, and for an accepted one
 * the canonical JSON, parsed again (it must be accepted too). */
#include <jansson.h>

#include "fuzz_common.h"
#include "jobspec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    json_error_t jerr;
    json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!body) return 0;
    struct lorad_job_spec spec;
    struct lorad_error err = {0};
    if (lorad_job_spec_parse(body, &spec, &err) == 0) {
        json_t *canon = lorad_job_spec_to_json(&spec);
        if (canon) {
            struct lorad_job_spec again;
            if (lorad_job_spec_parse(canon, &again, &err) != 0) abort(); /* our own output refused */
            lorad_job_spec_clear(&again);
            json_decref(canon);
        }
        lorad_job_spec_clear(&spec);
    }
    json_decref(body);
    return 0;
}
