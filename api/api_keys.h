/* The API keys: the keys of api_key_file, checked against each request's bearer token.
 *
 * One lorad_api_keys is shared by every listener of a daemon, so a SIGHUP loads the file once and
 * swaps the key set once for all of them (no listener can be left on another set).
 *
 * The file has one key per line. A CR before the LF is dropped, then spaces and tabs around the
 * key; blank lines and lines whose first non-blank byte is '#' are skipped. A key is at most
 * LORAD_API_MAX_KEY_BYTES bytes and has no spaces or control characters inside; a line is at most
 * LORAD_API_MAX_KEY_LINE_BYTES bytes (room for indentation and comments); a file has at most
 * LORAD_API_MAX_KEYS keys. Anything else refuses the whole file, naming the line: a file is never
 * half used, and a long line is never cut into keys. A file with no keys turns authentication on
 * with nothing accepted (401 without a token, 403 with one): an emptied file revokes every key,
 * it does not open the API. */
#pragma once
#include <stddef.h>

#include "error.h"

#define LORAD_API_MAX_KEY_BYTES 255
#define LORAD_API_MAX_KEYS 64
#define LORAD_API_MAX_KEY_LINE_BYTES 4096

struct lorad_api_keys;

/* Creates the shared key holder with the keys of path (NULL or "": authentication off). Returns 0
 * and *ret_keys (the caller owns it: lorad_api_keys_free), or -errno with err (param
 * "api_key_file") saying "cannot read api_key_file PATH: ..." or "api_key_file PATH line N: ...":
 * -ENOENT/-EACCES/-EIO/... (cannot read), -E2BIG (a key longer than LORAD_API_MAX_KEY_BYTES, a
 * line longer than LORAD_API_MAX_KEY_LINE_BYTES, more than LORAD_API_MAX_KEYS keys), -EINVAL (a
 * space or control character inside a key), -ENAMETOOLONG (path), -ENOMEM. */
int lorad_api_keys_open(const char *path, struct lorad_api_keys **ret_keys, struct lorad_error *err);

/* Loads the key file at path and, only if all of it is valid, makes it the one in use: its keys
 * replace the current ones at once for every request (no request sees a mix). "" turns
 * authentication off. On failure (the errors of lorad_api_keys_open) the old file and keys stay.
 * Call from one thread at a time (the daemon's main thread); checks may run meanwhile. */
int lorad_api_keys_use_file(struct lorad_api_keys *keys, const char *path, struct lorad_error *err);

/* Re-reads the file in use (SIGHUP): lorad_api_keys_use_file with the current path; 0 when
 * authentication is off. */
int lorad_api_keys_reload(struct lorad_api_keys *keys, struct lorad_error *err);

/* How many keys are in use (0 with authentication off, or with a file that has no keys). */
size_t lorad_api_keys_count(struct lorad_api_keys *keys);

/* The verdict on a request's Authorization header value (NULL: none): 0 when keys is NULL,
 * authentication is off or the header is "Bearer KEY" with a key in use; 401 without a bearer
 * token; 403 with one that is not a key. Thread-safe. The comparison takes the same time whichever
 * key matches (if any), where the first differing byte is, how long the keys are and how many. */
unsigned lorad_api_keys_verdict(struct lorad_api_keys *keys, const char *authorization);

/* Frees the holder and wipes its copy of the keys. NULL is fine. No check may be running: free it
 * only after every server that borrows it has stopped. */
void lorad_api_keys_free(struct lorad_api_keys *keys);
