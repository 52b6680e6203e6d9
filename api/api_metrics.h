/* Request counters and latency histograms by route template and status, in Prometheus text
 * format. The daemon's /metrics handler appends its job gauges through registered callbacks. */
#pragma once
#include <stddef.h>

/* Called by the transport when a request ends. route_template NULL means "no route matched". */
void lorad_api_metrics_observe(const char *method, const char *route_template, unsigned status, double seconds);

/* A gauge source: appends Prometheus text lines to out (at most cap bytes, NUL-terminated) and
 * returns the bytes written. Up to 16 sources; returns 0 or -ENOSPC. */
typedef size_t (*lorad_api_gauge_fn)(void *ctx, char *out, size_t cap);
int lorad_api_metrics_add_gauge(lorad_api_gauge_fn fn, void *ctx);

/* Renders every series. Returns a malloc'd NUL-terminated string (caller frees) or NULL. */
char *lorad_api_metrics_render(size_t *ret_len);
