/* What `lorad train` shows while it runs, in the forms the tools users know (tqdm, the Hugging
 * Face Trainer, torchtune):
 *   TTY      one live line redrawn in place: a bar, step/total, the smoothed loss, tokens/s,
 *            elapsed<ETA; an evaluation's figures go on a line of their own above it
 *   LINES    (stdout not a terminal) one line at the first step, at each evaluation, at most
 *            every LORAD_PROGRESS_LINE_S seconds between, and at the last step: a log of a
 *            thousand-step run stays a screenful
 *   QUIET    nothing but warnings, errors and the final line
 *   JSON     one JSON object a line on stdout for scripts: {"event":"step","metrics":{...}} for
 *            every step, "checkpoint", "message" and a last {"event":"result",...} (train_wire.h's
 *            objects; documented in docs/training.md)
 * The smoothed loss is an exponential moving average with bias correction (as tqdm smooths its
 * rate), so the first steps are not pulled towards zero. */
#pragma once
#include <stdbool.h>
#include <stdio.h>

#include "train.h"

#define LORAD_PROGRESS_LINE_S 10.0 /* LINES mode: seconds between two progress lines at most */
#define LORAD_PROGRESS_SMOOTHING 0.9 /* weight of the past in the smoothed loss */

enum lorad_progress_mode { LORAD_PROGRESS_TTY, LORAD_PROGRESS_LINES, LORAD_PROGRESS_QUIET, LORAD_PROGRESS_JSON };

struct lorad_progress {
    enum lorad_progress_mode mode;
    FILE *out;              /* TTY: stderr; others: stdout */
    double ema;             /* the loss average before bias correction */
    double ema_weight;      /* 1 - SMOOTHING^n: what the correction divides by */
    double last_line_s;     /* LINES: elapsed_s of the last line printed; < 0 before the first */
    bool line_open;         /* TTY: the live line is on screen (a message must clear it first) */
    char live[256];         /* TTY: the live line's text, redrawn below a message */
};

/* A progress display in mode; TTY draws on stderr, the others write to stdout. */
void lorad_progress_init(struct lorad_progress *p, enum lorad_progress_mode mode);

/* The loss shown after one more step: the bias-corrected moving average of the losses so far. */
double lorad_progress_smooth(struct lorad_progress *p, double loss);

/* Callbacks for lorad_train_callbacks (ctx is the lorad_progress). */
void lorad_progress_step(void *ctx, const struct lorad_step_metrics *m);
void lorad_progress_checkpoint(void *ctx, int64_t step, const char *dir, const struct lorad_step_metrics *m);
void lorad_progress_message(void *ctx, const char *level, const char *message);

/* Ends the live line (TTY) so what follows starts on a line of its own. */
void lorad_progress_finish(struct lorad_progress *p);
