/* The line protocol between `lorad serve` and the `lorad train --jsonl` it launches under mpirun
 * (issue 16): rank 0 reports the run as it goes, one JSON object per line on stdout, so the daemon
 * can mirror it into the store exactly as it mirrors a run in its own process:
 *   {"event":"step","metrics":{...}}                        lorad_train_callbacks.on_step
 *   {"event":"checkpoint","step":N,"dir":D,"metrics":{...}} .on_checkpoint
 *   {"event":"message","level":L,"message":M}               .on_message
 *   {"event":"result","rc":0|-errno,"param","message",...}  what lorad_train_run returned
 *   {"event":"alive"}                                       every few seconds, from the start
 * and reads `pause` or `cancel` lines on stdin (mpirun forwards its stdin to rank 0); end of input
 * pauses, since the daemon that would have asked is gone. Both ends are the same binary, so the
 * protocol has no version: it is not an interface for other programs. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "train.h"

#define LORAD_WIRE_LINE_MAX (1 << 16) /* longest line either end writes or accepts */
#define LORAD_WIRE_HEARTBEAT_S 2      /* rank 0 says it is alive at least this often */

/* Writes one line for each callback, or the run's result; false when the write failed. */
bool lorad_wire_step(FILE *out, const struct lorad_step_metrics *m);
bool lorad_wire_checkpoint(FILE *out, int64_t step, const char *dir, const struct lorad_step_metrics *m);
bool lorad_wire_message(FILE *out, const char *level, const char *message);
bool lorad_wire_result(FILE *out, int rc, const struct lorad_error *err, const struct lorad_train_result *res);

/* Starts a thread that writes {"event":"alive"} every period_s seconds for the life of the
 * process, so the daemon can tell a rank 0 that works (or loads) from one that is gone while
 * mpirun hangs on. 0 or -errno. */
int lorad_wire_heartbeat_start(FILE *out, int period_s);

/* What one received line was. */
enum lorad_wire_event { LORAD_WIRE_OTHER, LORAD_WIRE_CALLBACK, LORAD_WIRE_RESULT };

/* Parses one line and calls the matching callback of cb (any may be NULL), or, for the result,
 * fills *ret_rc, *ret_err and *ret_res. A line that is not the protocol's (mpirun's own notes, a
 * stray print) is LORAD_WIRE_OTHER and changes nothing: the caller may log it. */
enum lorad_wire_event lorad_wire_dispatch(const char *line, const struct lorad_train_callbacks *cb, int *ret_rc,
                                          struct lorad_error *ret_err, struct lorad_train_result *ret_res);

/* The control reader of the child's rank 0: reads what stdin holds without blocking and returns
 * the request so far (sticky: once asked, a pause or cancel stays asked; cancel wins over pause). */
struct lorad_wire_control {
    int fd;
    enum lorad_train_control asked;
    char pending[64];
    size_t n_pending;
};
void lorad_wire_control_init(struct lorad_wire_control *c, int fd);
enum lorad_train_control lorad_wire_control_poll(struct lorad_wire_control *c);
