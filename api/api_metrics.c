#include "api_metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes.h"

/* Prometheus' default bucket bounds (seconds). */
static const double bucket_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define N_BUCKETS (sizeof bucket_le / sizeof bucket_le[0])
#define MAX_SERIES 256

struct series {
    char method[8];
    const char *route; /* static string from the route table, or "unmatched" */
    unsigned status;
    unsigned long long count;
    double sum;
    unsigned long long bucket[N_BUCKETS];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct series series[MAX_SERIES];
static size_t n_series;
static struct {
    lorad_api_gauge_fn fn;
    void *ctx;
} gauges[16];
static size_t n_gauges;

void lorad_api_metrics_observe(const char *method, const char *route_template, unsigned status, double seconds) {
    const char *route = route_template ? route_template : "unmatched";
    /* Unmatched requests are all counted under one method label so clients cannot grow the table. */
    if (!route_template) method = "any";
    pthread_mutex_lock(&lock);
    struct series *s = NULL;
    for (size_t i = 0; i < n_series; i++)
        if (series[i].status == status && strcmp(series[i].route, route) == 0 && strcmp(series[i].method, method) == 0)
            s = &series[i];
    if (!s && n_series < MAX_SERIES) {
        s = &series[n_series++];
        snprintf(s->method, sizeof s->method, "%s", method);
        s->route = route;
        s->status = status;
    }
    if (s) {
        s->count++;
        s->sum += seconds;
        for (size_t b = 0; b < N_BUCKETS; b++)
            if (seconds <= bucket_le[b]) s->bucket[b]++;
    }
    pthread_mutex_unlock(&lock);
}

int lorad_api_metrics_add_gauge(lorad_api_gauge_fn fn, void *ctx) {
    pthread_mutex_lock(&lock);
    int r = -ENOSPC;
    if (n_gauges < 16) {
        gauges[n_gauges].fn = fn;
        gauges[n_gauges++].ctx = ctx;
        r = 0;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

char *lorad_api_metrics_render(size_t *ret_len) {
    FILE *f;
    char *text = NULL;
    size_t len = 0;
    if (!(f = open_memstream(&text, &len))) return NULL;
    pthread_mutex_lock(&lock);
    fprintf(f, "# HELP lorad_http_requests_total HTTP requests by route template and status.\n"
               "# TYPE lorad_http_requests_total counter\n");
    for (size_t i = 0; i < n_series; i++)
        fprintf(f, "lorad_http_requests_total{method=\"%s\",route=\"%s\",status=\"%u\"} %llu\n", series[i].method,
                series[i].route, series[i].status, series[i].count);
    fprintf(f, "# HELP lorad_http_request_duration_seconds Time from request start to completion.\n"
               "# TYPE lorad_http_request_duration_seconds histogram\n");
    for (size_t i = 0; i < n_series; i++) {
        const struct series *s = &series[i];
        for (size_t b = 0; b < N_BUCKETS; b++)
            fprintf(f, "lorad_http_request_duration_seconds_bucket{method=\"%s\",route=\"%s\",status=\"%u\",le=\"%g\"} %llu\n",
                    s->method, s->route, s->status, bucket_le[b], s->bucket[b]);
        fprintf(f, "lorad_http_request_duration_seconds_bucket{method=\"%s\",route=\"%s\",status=\"%u\",le=\"+Inf\"} %llu\n",
                s->method, s->route, s->status, s->count);
        fprintf(f, "lorad_http_request_duration_seconds_sum{method=\"%s\",route=\"%s\",status=\"%u\"} %.9g\n", s->method,
                s->route, s->status, s->sum);
        fprintf(f, "lorad_http_request_duration_seconds_count{method=\"%s\",route=\"%s\",status=\"%u\"} %llu\n",
                s->method, s->route, s->status, s->count);
    }
    for (size_t g = 0; g < n_gauges; g++) {
        char chunk[8192];
        size_t n = gauges[g].fn(gauges[g].ctx, chunk, sizeof chunk);
        fwrite(chunk, 1, n < sizeof chunk ? n : sizeof chunk - 1, f);
    }
    pthread_mutex_unlock(&lock);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    if (ret_len) *ret_len = len;
    return text;
}
