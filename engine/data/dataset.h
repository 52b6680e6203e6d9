/* JSONL fine-tuning datasets, streamed line by line (a file is never held in memory whole).
 *
 * Formats, detected per file from the first non-blank line:
 *   text               {"text": "..."}                          every token trained
 *   prompt_completion  {"prompt": "...", "completion": "..."}   completion trained
 *   alpaca             {"instruction", "input"?, "output"}       output trained
 *   messages           {"messages": [{"role", "content", "weight"?}, ...]}  assistant turns trained;
 *                      an assistant turn with "weight": 0 is masked
 *   preference         {"input": {"messages": [...], "tools"?: []},
 *                       "preferred_output": [{"role": "assistant", "content"}],
 *                       "non_preferred_output": [{"role": "assistant", "content"}]}  (OpenAI's DPO
 *                      format) two samples: the prompt followed by either output, the output trained
 * Blank lines are skipped. Each record becomes a list of turns; chat_template.h turns them into
 * token ids and labels. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "data_format.h"

#define LORAD_DATASET_DEFAULT_MAX_LINE (1 << 20)  /* bytes per JSONL line */
#define LORAD_DATASET_MAX_TURNS 1024
#define LORAD_DATASET_REPORT_LINES 20             /* bad lines kept in a report */

enum lorad_dataset_problem {
    LORAD_PROBLEM_INVALID_JSON = 0,
    LORAD_PROBLEM_WRONG_TYPE,       /* not an object, missing key, value of the wrong type */
    LORAD_PROBLEM_UNKNOWN_ROLE,
    LORAD_PROBLEM_NO_ASSISTANT,
    LORAD_PROBLEM_EMPTY,            /* nothing to train on after templating */
    LORAD_PROBLEM_LINE_TOO_LONG,
    LORAD_PROBLEM_INVALID_UTF8,
    LORAD_PROBLEM_TOO_MANY_TOKENS,  /* a preference pair longer than max_seq_len (never cut) */
    LORAD_PROBLEM_COUNT
};

/* The stable names used in reports and the API ("invalid_json", "wrong_type", ...). */
const char *lorad_dataset_problem_name(enum lorad_dataset_problem p);

enum lorad_role { LORAD_ROLE_SYSTEM = 0, LORAD_ROLE_USER, LORAD_ROLE_ASSISTANT, LORAD_ROLE_TEXT };

struct lorad_turn {
    enum lorad_role role;
    const char *text; /* UTF-8, borrowed from the record's JSON */
    size_t len;
    bool trainable;   /* assistant turns (weight != 0), completions, outputs, raw text */
};

/* One parsed line. Owns its JSON; turns point into it. A preference record's turns are its prompt
 * (n_prompt_turns, none of them trained) followed by one of its two outputs, the preferred one
 * after parsing (lorad_record_select_output picks). */
struct lorad_record {
    enum lorad_data_format format;
    int n_turns;
    struct lorad_turn turns[LORAD_DATASET_MAX_TURNS];
    int n_prompt_turns;               /* preference only */
    struct lorad_turn outputs[2];     /* preference only: preferred, non-preferred (trained) */
    const char *instruction, *input; /* alpaca only: the prompt fields, for the template */
    size_t instruction_len, input_len;
    const json_t *input_ids, *labels; /* tokens only: arrays of the root (labels may be NULL) */
    json_t *root;
};

/* Parses one line (len bytes, no newline) as format (AUTO detects from the keys). On a bad line
 * returns -EINVAL with *ret_problem set and err saying why (naming the key); ret_record is valid
 * only on success and is released with lorad_record_clear(). */
int lorad_record_parse(const char *line, size_t len, enum lorad_data_format format, struct lorad_record *ret_record,
                       enum lorad_dataset_problem *ret_problem, struct lorad_error *err);
void lorad_record_clear(struct lorad_record *rec);

/* Which output of a preference record its last turn is: 0 the preferred, 1 the non-preferred. */
void lorad_record_select_output(struct lorad_record *rec, int which);

/* Strict UTF-8 check (no overlongs, surrogates or code points above U+10FFFF). */
bool lorad_utf8_valid(const char *s, size_t len);

/* Reading a file line by line with a per-line size cap. A line longer than the cap is reported
 * (too_long) and skipped without being stored. */
struct lorad_line_reader;
int lorad_line_reader_open(struct lorad_line_reader **ret, const char *path, size_t max_line, struct lorad_error *err);
/* Returns 1 with the next line (*ret_line valid until the next call; no trailing newline or CR),
 * 0 at end of file, or -errno. *ret_lineno is 1-based; *ret_too_long is set for oversized lines. */
int lorad_line_reader_next(struct lorad_line_reader *r, const char **ret_line, size_t *ret_len, int64_t *ret_lineno,
                           bool *ret_too_long);
/* Rewinds to the first line (each epoch re-reads the file). */
int lorad_line_reader_rewind(struct lorad_line_reader *r);
/* Byte offset of the start of the line most recently returned (for random access by index). */
int64_t lorad_line_reader_offset(const struct lorad_line_reader *r);
/* Seeks to a byte offset previously returned by lorad_line_reader_offset(), and sets the line number. */
int lorad_line_reader_seek(struct lorad_line_reader *r, int64_t offset, int64_t lineno);
void lorad_line_reader_free(struct lorad_line_reader *r);

struct lorad_bad_line {
    int64_t line;
    enum lorad_dataset_problem problem;
    char reason[240];
};

struct lorad_dataset_report {
    enum lorad_data_format format; /* detected (or as given) */
    int64_t n_lines;               /* all lines, blank included */
    int64_t n_records;             /* valid records */
    int64_t n_invalid;
    int64_t n_blank;
    int64_t bytes;
    int64_t counts[LORAD_PROBLEM_COUNT];
    int n_bad;                     /* entries used in bad[] */
    struct lorad_bad_line bad[LORAD_DATASET_REPORT_LINES];
};

/* Validates the whole file, streaming. format AUTO detects it from the first non-blank line that is
 * a JSON object. Returns 0 when the file could be read (check report->n_invalid for bad lines);
 * -errno when it could not (err names the path). */
int lorad_dataset_validate_file(const char *path, enum lorad_data_format format, size_t max_line,
                                struct lorad_dataset_report *ret_report, struct lorad_error *err);

/* Counts a bad line in rep and keeps it (line, problem, reason) among the first
 * LORAD_DATASET_REPORT_LINES. */
void lorad_dataset_report_bad(struct lorad_dataset_report *rep, int64_t line, enum lorad_dataset_problem p,
                              const char *reason);

/* The report as JSON: {"format","lines","records","invalid","blank","bytes","problems":{name:count},
 * "bad_lines":[{"line","problem","reason"}]}. New reference, caller owns. */
json_t *lorad_dataset_report_json(const struct lorad_dataset_report *report);
