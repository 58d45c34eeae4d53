/* The HTTP API (contract in http.h). */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/err.h"

#define MAX_BODY    ((size_t)64 << 20) /* a bigger ingress request is refused, not buffered */
#define DRAIN_BATCH 100000

struct http {
    struct MHD_Daemon *d;
    struct http_context ctx;
};

/* A request's body, gathered across the calls libmicrohttpd makes. */
struct body {
    struct buf b;
    int too_big;
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             struct buf *text)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(text->len, text->data, MHD_RESPMEM_MUST_COPY);
    buf_free(text);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

/* Replies with j (taken) as JSON. */
static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, json_t *j)
{
    struct buf b = { 0 };
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text || buf_printf(&b, "%s\n", text)) {
        free(text);
        return MHD_NO;
    }
    free(text);
    return reply(c, status, "application/json", &b);
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *msg)
{
    return reply_json(c, status, json_pack("{s:s}", "error", msg));
}

static json_t *status_json(struct pipeline *p)
{
    struct pipeline_stats st;
    pipeline_get_stats(p, &st);
    return json_pack(
        "{s:s, s:I, s:I, s:I, s:I, s:s?, s:s?, s:I}", "state", st.standby ? "standby" : "running",
        "step", (json_int_t)st.step, "records", (json_int_t)st.records, "skipped",
        (json_int_t)st.skipped, "checkpoints", (json_int_t)st.checkpoints, "last_checkpoint",
        st.last_checkpoint[0] ? st.last_checkpoint : NULL, "resumed_from",
        st.resumed_from[0] ? st.resumed_from : NULL, "replayed", (json_int_t)st.replayed);
}

static json_t *activate_json(struct http *h, int *status)
{
    int rc = pipeline_activate(h->ctx.p);
    if (rc) {
        *status =
            rc == -EROFS || rc == -EINVAL ? MHD_HTTP_CONFLICT : MHD_HTTP_INTERNAL_SERVER_ERROR;
        return json_pack("{s:s}", "error", err_msg(rc));
    }
    json_t *j = status_json(h->ctx.p);
    json_object_set_new(j, "activated", json_true());
    return j;
}

static json_t *checkpoint_json(struct http *h, int *status)
{
    char id[32];
    uint64_t bytes;
    if (h->ctx.ft == FT_NONE) {
        *status = MHD_HTTP_CONFLICT;
        return json_pack("{s:s}", "error", "no fault tolerance (--ft none): no checkpoints");
    }
    int rc = pipeline_drain(h->ctx.p, DRAIN_BATCH); /* what /ingress took is in it */
    if (rc == 0)
        rc = pipeline_checkpoint(h->ctx.p, id, sizeof id, &bytes);
    *status = rc ? MHD_HTTP_INTERNAL_SERVER_ERROR : MHD_HTTP_OK;
    return rc ? json_pack("{s:s}", "error", err_msg(rc))
              : json_pack("{s:s, s:I}", "checkpoint", id, "bytes", (json_int_t)bytes);
}

struct rows {
    const struct view *v;
    struct buf *out; /* a JSON array being written: rows go straight in, never parsed back */
    size_t n;
};

static int add_row(void *arg, const struct value *row, int weight)
{
    (void)weight;
    struct rows *r = arg;
    int rc = r->n++ ? buf_append(r->out, ",{", 2) : buf_append(r->out, "{", 1);
    for (size_t i = 0; rc == 0 && i < r->v->nitems; i++) {
        struct value key = { .t = T_VARCHAR,
                             .s = r->v->items[i].name,
                             .len = (uint32_t)strlen(r->v->items[i].name) };
        rc = i ? buf_append(r->out, ",", 1) : 0;
        rc = rc ? rc : value_json(&key, r->out);
        rc = rc ? rc : buf_append(r->out, ":", 1);
        rc = rc ? rc : value_json(&row[i], r->out);
    }
    return rc ? rc : buf_append(r->out, "}", 1);
}

static enum MHD_Result view_rows(struct http *h, struct MHD_Connection *c, const char *name)
{
    struct buf out = { 0 };
    struct rows r = { NULL, &out, 0 };
    int rc = buf_append(&out, "[", 1);
    rc = rc ? rc : pipeline_scan(h->ctx.p, name, &r.v, add_row, &r);
    rc = rc ? rc : buf_append(&out, "]\n", 2);
    if (rc == 0)
        return reply(c, MHD_HTTP_OK, "application/json", &out);
    buf_free(&out);
    return reply_error(c, rc == -ENOENT ? MHD_HTTP_NOT_FOUND : MHD_HTTP_INTERNAL_SERVER_ERROR,
                       err_msg(rc));
}

static void metric_view(void *arg, const char *name, uint64_t groups)
{
    buf_printf(arg, "ckptpipe_view_groups{view=\"%s\"} %llu\n", name, (unsigned long long)groups);
}

static enum MHD_Result metrics(struct http *h, struct MHD_Connection *c)
{
    struct pipeline_stats st;
    struct buf b = { 0 };
    pipeline_get_stats(h->ctx.p, &st);
    buf_printf(&b,
               "# TYPE ckptpipe_step gauge\nckptpipe_step %llu\n"
               "# TYPE ckptpipe_records_total counter\nckptpipe_records_total %llu\n"
               "# TYPE ckptpipe_skipped_total counter\nckptpipe_skipped_total %llu\n"
               "# TYPE ckptpipe_checkpoints_total counter\nckptpipe_checkpoints_total %llu\n"
               "# TYPE ckptpipe_view_groups gauge\n",
               (unsigned long long)st.step, (unsigned long long)st.records,
               (unsigned long long)st.skipped, (unsigned long long)st.checkpoints);
    pipeline_each_view(h->ctx.p, metric_view, &b);
    return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4", &b);
}

static json_t *ingress(struct http *h, const char *table, const struct body *body, int *status)
{
    if (body->too_big) {
        *status = MHD_HTTP_CONTENT_TOO_LARGE;
        return json_pack("{s:s}", "error", "the request is larger than 64 MiB: send it in parts");
    }
    struct pipeline_stats st;
    pipeline_get_stats(h->ctx.p, &st);
    if (st.standby) {
        *status = MHD_HTTP_SERVICE_UNAVAILABLE;
        return json_pack("{s:s}", "error", "a standby takes no input until POST /activate");
    }
    uint64_t end;
    int rc = pipeline_push(h->ctx.p, table, (const char *)body->b.data ?: "", body->b.len, &end);
    *status = rc >= 0 ? MHD_HTTP_OK : rc == -ENOENT ? MHD_HTTP_NOT_FOUND : MHD_HTTP_BAD_REQUEST;
    if (rc < 0)
        return json_pack("{s:s}", "error", err_msg(rc));
    int queued = rc;
    if (h->ctx.ft != FT_EXACTLY_ONCE)
        return json_pack("{s:i}", "queued", queued);
    /* Acknowledged once journaled, never lost after; and then acknowledged
     * even if a later step fails: a client would send it again. */
    rc = pipeline_drain(h->ctx.p, DRAIN_BATCH);
    pipeline_get_stats(h->ctx.p, &st);
    if (pipeline_taken(h->ctx.p, table) >= end)
        return json_pack("{s:i, s:I}", "queued", queued, "step", (json_int_t)st.step);
    *status = MHD_HTTP_INTERNAL_SERVER_ERROR;
    return json_pack("{s:s}", "error", rc ? err_msg(rc) : "not taken");
}

/* One whole request, the pipeline's lock held. */
static enum MHD_Result route(struct http *h, struct MHD_Connection *c, const char *url, int post,
                             const struct body *body)
{
    int status = MHD_HTTP_OK;
    json_t *j = NULL;
    if (!post && !strcmp(url, "/status"))
        j = status_json(h->ctx.p);
    else if (!post && !strcmp(url, "/metrics"))
        return metrics(h, c);
    else if (!post && !strncmp(url, "/views/", 7))
        return view_rows(h, c, url + 7);
    else if (post && !strcmp(url, "/checkpoint"))
        j = checkpoint_json(h, &status);
    else if (post && !strcmp(url, "/stop")) {
        struct pipeline_stats st;
        pipeline_get_stats(h->ctx.p, &st);
        j = h->ctx.ft != FT_NONE && !st.standby ? checkpoint_json(h, &status) : json_object();
        if (status == MHD_HTTP_OK) {
            *h->ctx.stop = 1;
            json_object_set_new(j, "stopped", json_true());
        }
    } else if (post && !strcmp(url, "/activate"))
        j = activate_json(h, &status);
    else if (post && !strncmp(url, "/ingress/", 9))
        j = ingress(h, url + 9, body, &status);
    else
        return reply_error(c, MHD_HTTP_NOT_FOUND, "no such endpoint");
    return reply_json(c, (unsigned)status, j);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *size, void **state)
{
    (void)version;
    struct http *h = cls;
    int post = !strcmp(method, "POST");
    if (!post && strcmp(method, "GET"))
        return reply_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "GET or POST");
    struct body *body = *state;
    if (!body) { /* the first call: headers only */
        if (!(body = calloc(1, sizeof *body)))
            return MHD_NO;
        *state = body;
        return MHD_YES;
    }
    if (*size) { /* a piece of the body */
        if (body->b.len + *size > MAX_BODY)
            body->too_big = 1;
        else if (buf_append(&body->b, data, *size))
            return MHD_NO;
        *size = 0;
        return MHD_YES;
    }
    pthread_mutex_lock(h->ctx.lock);
    enum MHD_Result rc = route(h, c, url, post, body);
    pthread_mutex_unlock(h->ctx.lock);
    return rc;
}

static void on_done(void *cls, struct MHD_Connection *c, void **state,
                    enum MHD_RequestTerminationCode why)
{
    (void)cls;
    (void)c;
    (void)why;
    struct body *body = *state;
    if (body)
        buf_free(&body->b);
    free(body);
    *state = NULL;
}

int http_start(const char *listen, const struct http_context *ctx, struct http **out)
{
    const char *port_text = strrchr(listen, ':') ? strrchr(listen, ':') + 1 : listen;
    char *end;
    long port = strtol(port_text, &end, 10);
    if (*end || port < 1 || port > 65535 ||
        (port_text != listen && strncmp(listen, "127.0.0.1:", 10)))
        return err_set(
            -EINVAL, "--http %s: give 127.0.0.1:PORT (the API listens on localhost only)", listen);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct http *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    h->ctx = *ctx;
    h->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, (uint16_t)port, NULL, NULL, on_request,
                            h, MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_NOTIFY_COMPLETED, on_done,
                            NULL, MHD_OPTION_END);
    if (!h->d) {
        free(h);
        return err_set(-EADDRINUSE, "--http %s: cannot listen there (taken?)", listen);
    }
    *out = h;
    return 0;
}

void http_stop(struct http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    free(h);
}
