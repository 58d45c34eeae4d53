/*
 * ckptpipe's HTTP API (libmicrohttpd, one thread of its own, 127.0.0.1):
 *
 *   GET  /status          {"state": "running"|"standby", "step", "records", "skipped",
 *                          "checkpoints", "last_checkpoint", "resumed_from", "replayed"}
 *   POST /checkpoint      {"checkpoint": ID} once committed (409 without --ft)
 *   POST /stop            a checkpoint (with --ft), then the pipeline exits: {"stopped": true, ...}
 *   POST /activate        a standby becomes the active pipeline (pipeline_activate):
 *                         {"activated": true, "resumed_from", "step", "replayed"}; 409 if
 *                         not a standby or its storage is still read-only
 *   POST /ingress/TABLE   the body's changes (JSON lines, or CSV if the table says so) for
 *                         the next step: {"queued": N}; 400 naming the bad line, nothing taken;
 *                         with exactly_once the reply waits until the step that takes them
 *                         is journaled ({"queued": N, "step": S}); 503 on a standby
 *   GET  /views/VIEW      the view's rows as of the last step, a JSON array
 *   GET  /metrics         Prometheus text
 *
 * Every request runs with the pipeline's lock held (the step loop holds it
 * during a step), so it sees the state between two steps.
 */
#ifndef CKPT_ENGINE_HTTP_H
#define CKPT_ENGINE_HTTP_H

#include <pthread.h>
#include <signal.h>

#include "engine/pipeline.h"

struct http;

struct http_context {
    struct pipeline *p;
    pthread_mutex_t *lock;       /* held around every use of p */
    volatile sig_atomic_t *stop; /* set by POST /stop */
    enum ft ft;                  /* the pipeline's --ft */
};

/* Listens on 127.0.0.1:port ("127.0.0.1:PORT" or "PORT"); -EINVAL naming a
 * bad address, -EADDRINUSE (said) if taken. ctx outlives it. */
int http_start(const char *listen, const struct http_context *ctx, struct http **out);
void http_stop(struct http *h);

#endif
