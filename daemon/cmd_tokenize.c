/* lorad tokenize: prints the ids (and pieces) of text, or of each stdin line for bulk checks. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "tokenizer.h"

static int print_one(const struct lorad_tokenizer *t, const char *text, size_t len, int ids_only) {
    struct lorad_error err = {0};
    int32_t *ids = NULL;
    size_t n = 0;
    if (lorad_tokenizer_encode(t, text, len, LORAD_TOKENIZER_DEFAULT, LORAD_TOKENIZER_DEFAULT, &ids, &n, &err) < 0) {
        fprintf(stderr, "lorad tokenize: %s\n", err.message);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (ids_only) printf(i ? " %d" : "%d", (int)ids[i]);
        else printf("%d\t%s\n", (int)ids[i], lorad_tokenizer_id_to_piece(t, ids[i]));
    }
    if (ids_only) putchar('\n');
    free(ids);
    return 0;
}

int lorad_cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *text = NULL;
    int ids_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) model = argv[++i];
        else if (strcmp(argv[i], "--ids") == 0) ids_only = 1;
        else if (strcmp(argv[i], "--") == 0 && i + 1 < argc && !text) text = argv[++i];
        else if (argv[i][0] != '-' && !text) text = argv[i];
        else {
            fprintf(stderr, "lorad tokenize: unexpected argument '%s'\n", argv[i]);
            return LORAD_EXIT_USAGE;
        }
    }
    if (!model) {
        fprintf(stderr, "lorad tokenize: --model PATH is required\n");
        return LORAD_EXIT_USAGE;
    }
    struct lorad_tokenizer *t = NULL;
    struct lorad_error err = {0};
    if (lorad_tokenizer_load(&t, model, &err) < 0) {
        fprintf(stderr, "lorad tokenize: %s\n", err.message);
        return LORAD_EXIT_FAILURE;
    }
    int status = LORAD_EXIT_OK;
    if (text) {
        if (print_one(t, text, strlen(text), ids_only) < 0) status = LORAD_EXIT_FAILURE;
    } else {
        char *line = NULL;
        size_t cap = 0;
        ssize_t got;
        while ((got = getline(&line, &cap, stdin)) >= 0) {
            size_t len = (size_t)got;
            if (len && line[len - 1] == '\n') len--;
            if (print_one(t, line, len, ids_only) < 0) {
                status = LORAD_EXIT_FAILURE;
                break;
            }
        }
        free(line);
    }
    lorad_tokenizer_free(t);
    if (fflush(stdout) != 0) status = LORAD_EXIT_FAILURE;
    return status;
}
