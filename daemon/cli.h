/* The lorad command line: one table of subcommands, each implemented in its own cmd_*.c file.
 * A subcommand returns the process exit status: 0 success, 1 failure at run time, 2 usage. */
#pragma once
#include <stdio.h>

#define LORAD_EXIT_OK 0
#define LORAD_EXIT_FAILURE 1
#define LORAD_EXIT_USAGE 2

struct lorad_command {
    const char *name;
    const char *summary;  /* one line for the top-level usage */
    const char *usage;    /* full text printed by `lorad NAME --help` */
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
};

/* The table, terminated by an entry with name == NULL. */
extern const struct lorad_command lorad_commands[];

/* Finds a subcommand by name; NULL when there is none. */
const struct lorad_command *lorad_command_find(const char *name);

/* Prints the top-level usage to f. */
void lorad_print_usage(FILE *f);

/* Prints a subcommand's usage to f. */
void lorad_command_print_usage(const struct lorad_command *cmd, FILE *f);

/* The whole CLI: dispatches argv to a subcommand and returns the exit status. */
int lorad_main(int argc, char **argv);

/* True when argv holds -h or --help before any "--"; lets every subcommand answer --help first. */
int lorad_wants_help(int argc, char **argv);

/* Subcommands. Each lives in daemon/cmd_NAME.c. */
int lorad_cmd_serve(int argc, char **argv);
int lorad_cmd_train(int argc, char **argv);
int lorad_cmd_generate(int argc, char **argv);
int lorad_cmd_inspect(int argc, char **argv);
int lorad_cmd_tokenize(int argc, char **argv);
int lorad_cmd_export(int argc, char **argv);
int lorad_cmd_version(int argc, char **argv);

/* For subcommands not built yet: prints "NAME: not implemented yet" and returns 2. */
int lorad_not_implemented(const char *name);
