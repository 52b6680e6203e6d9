/* What a dataset line is and how it is rendered: the formats a JSONL dataset may have and the
 * chat templates of a messages record. The dataset, template and sample code use them, and the
 * job spec names them (data.format, data.template). */
#pragma once

enum lorad_data_format {
    LORAD_DATA_AUTO = 0,
    LORAD_DATA_TEXT,              /* {"text"} */
    LORAD_DATA_PROMPT_COMPLETION, /* {"prompt","completion"} */
    LORAD_DATA_ALPACA,            /* {"instruction","input","output"} */
    LORAD_DATA_MESSAGES,          /* {"messages":[{"role","content","weight"?}]} */
    LORAD_DATA_TOKENS,            /* {"input_ids":[...], "labels"?:[...]}: pre-tokenised, no template */
    LORAD_DATA_PREFERENCE,        /* {"input":{"messages"},"preferred_output","non_preferred_output"}: DPO pairs */
};
enum lorad_chat_template {
    LORAD_TEMPLATE_AUTO = 0,
    LORAD_TEMPLATE_LLAMA2,
    LORAD_TEMPLATE_LLAMA3,
    LORAD_TEMPLATE_CHATML,
    LORAD_TEMPLATE_NONE,
};

/* The spec's name of each ("auto", "text", ..., "preference"; "auto", "llama2", ..., "none"). */
const char *lorad_data_format_name(enum lorad_data_format f);
const char *lorad_chat_template_name(enum lorad_chat_template t);
/* NULL-terminated lists of those names, in enum order (the spec parser's choices). */
extern const char *const lorad_data_format_names[];
extern const char *const lorad_chat_template_names[];
