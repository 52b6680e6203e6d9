#include "train_progress.h"

#include <math.h>
#include <string.h>

#include "train_wire.h"

void lorad_progress_init(struct lorad_progress *p, enum lorad_progress_mode mode) {
    memset(p, 0, sizeof *p);
    p->mode = mode;
    p->out = mode == LORAD_PROGRESS_TTY ? stderr : stdout;
    p->last_line_s = -1;
}

double lorad_progress_smooth(struct lorad_progress *p, double loss) {
    if (!isfinite(loss)) return loss; /* shown as it is; the average keeps its finite history */
    p->ema = LORAD_PROGRESS_SMOOTHING * p->ema + (1 - LORAD_PROGRESS_SMOOTHING) * loss;
    p->ema_weight = LORAD_PROGRESS_SMOOTHING * p->ema_weight + (1 - LORAD_PROGRESS_SMOOTHING);
    return p->ema / p->ema_weight;
}

/* "mm:ss" or "h:mm:ss"; "--:--" when unknown. */
static void format_duration(char *out, size_t n, double s) {
    if (!(s >= 0) || s > 1e9) {
        snprintf(out, n, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(out, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(out, n, "%02ld:%02ld", t / 60, t % 60);
}

/* TTY: takes the live line off the screen so a message can be printed where it was; returns
 * whether there was one, for redraw_live_line. */
static bool clear_live_line(struct lorad_progress *p) {
    if (p->mode != LORAD_PROGRESS_TTY || !p->line_open) return false;
    fputs("\r\033[K", p->out);
    p->line_open = false;
    return true;
}

/* TTY: puts the live line back under what was printed, as tqdm keeps its bar last. */
static void redraw_live_line(struct lorad_progress *p) {
    fprintf(p->out, "\r\033[K%s", p->live);
    p->line_open = true;
    fflush(p->out);
}

/* The step's evaluation figures as " valid_loss X valid_acc Y full_valid_loss Z full_valid_acc W",
 * each pair only when the step has it; "" when it has neither. */
static void format_eval(char *out, size_t n, const struct lorad_step_metrics *m) {
    int k = 0;
    out[0] = '\0';
    if (m->has_valid)
        k = snprintf(out, n, " valid_loss %.4f valid_acc %.3f", m->valid_loss, m->valid_mean_token_accuracy);
    if (m->has_full_valid && k >= 0 && (size_t)k < n)
        snprintf(out + k, n - (size_t)k, " full_valid_loss %.4f full_valid_acc %.3f", m->full_valid_loss,
                 m->full_valid_mean_token_accuracy);
}

void lorad_progress_step(void *ctx, const struct lorad_step_metrics *m) {
    struct lorad_progress *p = ctx;
    double loss = lorad_progress_smooth(p, m->train_loss);
    if (p->mode == LORAD_PROGRESS_JSON) {
        lorad_wire_step(p->out, m);
        return;
    }
    if (p->mode == LORAD_PROGRESS_QUIET) return;
    char eta[32], el[32], eval[160];
    format_duration(eta, sizeof eta, m->eta_s);
    format_duration(el, sizeof el, m->elapsed_s);
    format_eval(eval, sizeof eval, m);
    if (p->mode == LORAD_PROGRESS_TTY) {
        if (eval[0]) {
            clear_live_line(p); /* the new live line follows at once */
            fprintf(p->out, "step %lld:%s\n", (long long)m->step, eval);
        }
        enum { WIDTH = 24 };
        int filled = m->total_steps > 0 ? (int)(WIDTH * m->step / m->total_steps) : 0;
        char bar[WIDTH + 1];
        for (int i = 0; i < WIDTH; i++) bar[i] = i < filled ? '#' : '.';
        bar[WIDTH] = '\0';
        int pct = m->total_steps > 0 ? (int)(100 * m->step / m->total_steps) : 0;
        snprintf(p->live, sizeof p->live, "%3d%% [%s] %lld/%lld loss %.4f lr %.2e %.0f tok/s %s<%s", pct, bar,
                 (long long)m->step, (long long)m->total_steps, loss, m->lr, m->tokens_per_s, el, eta);
        redraw_live_line(p);
        return;
    }
    bool due = p->last_line_s < 0 || eval[0] || m->step == m->total_steps ||
               m->elapsed_s - p->last_line_s >= LORAD_PROGRESS_LINE_S;
    if (!due) return;
    p->last_line_s = m->elapsed_s;
    fprintf(p->out, "step %lld/%lld epoch %.2f loss %.4f (smoothed %.4f) acc %.3f lr %.3e grad_norm %.4f %.0f tok/s "
                    "elapsed %s eta %s%s\n",
            (long long)m->step, (long long)m->total_steps, m->epoch, m->train_loss, loss, m->train_mean_token_accuracy,
            m->lr, m->grad_norm, m->tokens_per_s, el, eta, eval);
    fflush(p->out);
}

void lorad_progress_checkpoint(void *ctx, int64_t step, const char *dir, const struct lorad_step_metrics *m) {
    struct lorad_progress *p = ctx;
    if (p->mode == LORAD_PROGRESS_JSON) {
        lorad_wire_checkpoint(p->out, step, dir, m);
        return;
    }
    if (p->mode == LORAD_PROGRESS_QUIET) return;
    bool live = clear_live_line(p);
    fprintf(p->out, "checkpoint step %lld -> %s\n", (long long)step, dir);
    if (live) redraw_live_line(p);
    fflush(p->out);
}

void lorad_progress_message(void *ctx, const char *level, const char *message) {
    struct lorad_progress *p = ctx;
    if (p->mode == LORAD_PROGRESS_JSON) {
        lorad_wire_message(p->out, level, message);
        return;
    }
    if (p->mode == LORAD_PROGRESS_QUIET && strcmp(level, "info") == 0) return;
    bool live = clear_live_line(p);
    fprintf(stderr, "%s: %s\n", level, message);
    if (live) redraw_live_line(p);
}

void lorad_progress_finish(struct lorad_progress *p) {
    if (p->mode == LORAD_PROGRESS_TTY && p->line_open) {
        fputc('\n', p->out);
        p->line_open = false;
    }
}
