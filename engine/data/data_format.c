/* The names of the dataset formats and chat templates (data_format.h). */
#include "data_format.h"

#include <stddef.h>

const char *const lorad_data_format_names[] = {"auto", "text", "prompt_completion", "alpaca", "messages", "tokens",
                                               "preference", NULL};
const char *const lorad_chat_template_names[] = {"auto", "llama2", "llama3", "chatml", "none", NULL};

const char *lorad_data_format_name(enum lorad_data_format f) { return lorad_data_format_names[f]; }
const char *lorad_chat_template_name(enum lorad_chat_template t) { return lorad_chat_template_names[t]; }
