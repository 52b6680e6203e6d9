/* The JSONL dataset: the first byte picks the format and the chat template; the rest is one file,
 * validated whole (line reader, record parser, report), and its first line, when it parses, is
 * rendered with the template as training would. */
#include <stdbool.h>

#include "chat_template.h"
#include "data_format.h"
#include "dataset.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    enum lorad_data_format format = (enum lorad_data_format)(data[0] % (LORAD_DATA_PREFERENCE + 1));
    enum lorad_chat_template tmpl = (enum lorad_chat_template)(LORAD_TEMPLATE_LLAMA2 + (data[0] >> 4) % 3);
    bool train_on_input = data[0] & 8;
    data++, size--;
    char path[64];
    int fd = fuzz_file(data, size, path);
    struct lorad_dataset_report *rep = calloc(1, sizeof *rep);
    struct lorad_error err = {0};
    if (!rep) abort();
    lorad_dataset_validate_file(path, format, 4096, rep, &err);
    free(rep);
    close(fd);

    const uint8_t *nl = memchr(data, '\n', size);
    size_t len = nl ? (size_t)(nl - data) : size;
    struct lorad_record rec;
    enum lorad_dataset_problem problem;
    if (lorad_record_parse((const char *)data, len, format, &rec, &problem, &err) == 0) {
        struct lorad_rendered *out = malloc(sizeof *out);
        if (!out) abort();
        if (format != LORAD_DATA_TOKENS) lorad_chat_render(out, &rec, tmpl, train_on_input);
        free(out);
        lorad_record_clear(&rec);
    }
    return 0;
}
