/*
 * The retry and accounting layer: the one place that decides whether a
 * failed request is tried again, how long to wait first, and what is
 * counted. Backends make exactly one attempt per call.
 *
 * Policy:
 *  1. Transient failures (store_err_retryable: 5xx, 429, SlowDown, resets,
 *     refused or timed-out connections) are retried up to max_attempts in
 *     all, waiting a random time in [0, min(cap, base * 2^(n-1))] before
 *     retry n ("full jitter"), so clients that failed together do not retry
 *     together.
 *  2. Everything else (403, 404, other 4xx, local errors) fails at once.
 *  3. Operations are idempotent, because objects are never modified in
 *     place (DESIGN.md), with three subtleties when an attempt reached the
 *     server but its answer was lost:
 *     a. a retried conditional put meets -EEXIST: if the object holds
 *        exactly our bytes, it was our own put, and that is success;
 *     b. a retried multipart completion meets -ENOENT (NoSuchUpload): if
 *        the object now exists, our completion consumed the upload: success;
 *     c. a retried multipart start opens a second upload and the first is
 *        orphaned; it costs storage until aborted, and a bucket lifecycle
 *        rule (AbortIncompleteMultipartUpload) is the remedy (README).
 *  4. A failed attempt leaves no trace in the caller's buffer: a get that
 *     received half a body and then failed is rewound before the retry.
 *  5. A listing callback's own non-zero return is the caller's decision to
 *     stop, never a failure to retry.
 */
#include "store_impl.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "util/err.h"
#include "util/log.h"

struct retry {
    struct store_ops ops; /* retry_ops, less what the backend lacks */
    struct store *inner;
    struct store_op_stats op[STORE_OP_COUNT];
    pthread_mutex_t lock; /* guards last_error */
    char last_error[256];
};

/* The arguments of one call, so a single loop can retry every operation. */
struct call {
    enum store_op op;
    const char *key;
    const char *key2;
    const void *data;
    size_t len;
    unsigned flags;
    uint64_t off, count;
    struct buf *out;
    struct store_object *obj;
    const char *const *keys;
    struct store_page *page;
    int stopped_by_callback;
    store_list_fn user_fn;
    void *user_arg;
    /* multipart */
    const char *upload_id;
    unsigned partno;
    char **result;
    char *const *etags;
    int mp_kind;
};

enum { MP_BEGIN, MP_PART, MP_COMPLETE, MP_ABORT };

int store_err_retryable(int err)
{
    switch (err) {
    case -EAGAIN:
    case -ETIMEDOUT:
    case -ECONNRESET:
    case -ECONNREFUSED:
    case -ECONNABORTED:
    case -EHOSTUNREACH:
    case -ENETUNREACH:
    case -EPIPE:
        return 1;
    default:
        return 0;
    }
}

static void add(uint64_t *counter, uint64_t n)
{
    __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

static uint64_t now_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static unsigned jitter_ms(unsigned limit)
{
    static __thread uint64_t state;
    if (!state && getrandom(&state, sizeof state, 0) != (ssize_t)sizeof state)
        state = now_usec() | 1;
    /* xorshift64: enough to spread retries, no need for a strong generator */
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return limit ? (unsigned)(state % ((uint64_t)limit + 1)) : 0;
}

static unsigned backoff_ms(const struct store_options *o, unsigned retry)
{
    uint64_t ceiling = o->backoff_base_ms;
    for (unsigned i = 1; i < retry && ceiling < o->backoff_cap_ms; i++)
        ceiling *= 2;
    if (ceiling > o->backoff_cap_ms)
        ceiling = o->backoff_cap_ms;
    return jitter_ms((unsigned)ceiling);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

static int list_relay(void *arg, const struct store_object *obj)
{
    struct call *c = arg;
    int rc = c->user_fn(c->user_arg, obj);
    if (rc)
        c->stopped_by_callback = 1;
    return rc;
}

static int dispatch_mp(struct store *in, struct call *c)
{
    const struct store_ops *o = in->ops;
    switch (c->mp_kind) {
    case MP_BEGIN:
        return o->mp_begin(in->impl, c->key, c->result);
    case MP_PART:
        return o->mp_part(in->impl, c->key, c->upload_id, c->partno, c->data, c->len, c->result);
    case MP_COMPLETE:
        return o->mp_complete(in->impl, c->key, c->upload_id, c->etags, c->partno);
    default:
        return o->mp_abort(in->impl, c->key, c->upload_id);
    }
}

static int dispatch(struct store *in, struct call *c)
{
    const struct store_ops *o = in->ops;
    switch (c->op) {
    case STORE_OP_PUT:
        return o->put(in->impl, c->key, c->data, c->len, c->flags);
    case STORE_OP_GET:
        return o->get(in->impl, c->key, c->off, c->count, c->out);
    case STORE_OP_HEAD:
        return o->head(in->impl, c->key, c->obj);
    case STORE_OP_DELETE:
        return o->del(in->impl, c->key);
    case STORE_OP_DELETE_MANY:
        return o->del_many(in->impl, c->keys, c->len);
    case STORE_OP_LIST:
        return o->list_page(in->impl, c->page);
    case STORE_OP_COPY:
        return o->copy(in->impl, c->key, c->key2);
    default:
        return dispatch_mp(in, c);
    }
}

static int run(struct retry *r, struct call *c);

/* Rule 3a: after a lost answer, our own conditional put looks like someone else's. */
static int was_our_put(struct retry *r, const struct call *c)
{
    struct buf have = { 0 };
    struct call get = { .op = STORE_OP_GET, .key = c->key, .count = STORE_TO_END, .out = &have };
    int same = run(r, &get) == 0 && have.len == c->len &&
               (c->len == 0 || !memcmp(have.data, c->data, c->len));
    buf_free(&have);
    return same;
}

/* Rule 3b: the upload is gone because our lost-answer completion finished it. */
static int was_our_completion(struct retry *r, const struct call *c)
{
    struct store_object obj;
    struct call head = { .op = STORE_OP_HEAD, .key = c->key, .obj = &obj };
    return run(r, &head) == 0;
}

/* Rule 3: an error after a retry that may be the echo of our own lost success. */
static int echo_of_success(struct retry *r, const struct call *c, int rc)
{
    if (rc == -EEXIST && c->op == STORE_OP_PUT)
        return was_our_put(r, c);
    if (rc == -ENOENT && c->op == STORE_OP_PART && c->mp_kind == MP_COMPLETE)
        return was_our_completion(r, c);
    return 0;
}

static void note_failure(struct retry *r, int rc)
{
    pthread_mutex_lock(&r->lock);
    snprintf(r->last_error, sizeof r->last_error, "%s", err_msg(rc));
    pthread_mutex_unlock(&r->lock);
}

static void account(struct retry *r, const struct call *c, int rc, uint64_t usec, size_t got)
{
    struct store_op_stats *st = &r->op[c->op];
    add(&st->requests, 1);
    add(&st->usec, usec);
    if (rc) {
        note_failure(r, rc);
        return;
    }
    if (c->op == STORE_OP_PUT || (c->op == STORE_OP_PART && c->mp_kind == MP_PART))
        add(&st->bytes_up, c->len);
    add(&st->bytes_down, got);
}

static int run(struct retry *r, struct call *c)
{
    const struct store_options *o = &r->inner->opt;
    size_t mark = c->out ? c->out->len : 0;
    int rc;
    for (unsigned attempt = 1;; attempt++) {
        uint64_t t0 = now_usec();
        rc = dispatch(r->inner, c);
        size_t got = c->out ? c->out->len - mark : 0;
        account(r, c, rc, now_usec() - t0, got);
        if (rc && c->out) {
            c->out->len = mark;
            if (c->out->data)
                c->out->data[mark] = 0;
        }
        if (rc && attempt > 1 && echo_of_success(r, c, rc))
            rc = 0;
        if (rc == 0 || c->stopped_by_callback || !store_err_retryable(rc) ||
            attempt >= o->max_attempts)
            break;
        add(&r->op[c->op].retries, 1);
        unsigned wait = backoff_ms(o, attempt);
        log_debug("%s %s: %s; retry %u in %u ms", store_op_name(c->op), c->key ? c->key : "",
                  err_msg(rc), attempt, wait);
        sleep_ms(wait);
    }
    if (rc && !c->stopped_by_callback)
        add(&r->op[c->op].errors, 1);
    return rc;
}

static int r_put(void *impl, const char *key, const void *data, size_t len, unsigned flags)
{
    struct call c = { .op = STORE_OP_PUT, .key = key, .data = data, .len = len, .flags = flags };
    return run(impl, &c);
}

static int r_get(void *impl, const char *key, uint64_t off, uint64_t len, struct buf *out)
{
    struct call c = { .op = STORE_OP_GET, .key = key, .off = off, .count = len, .out = out };
    return run(impl, &c);
}

static int r_head(void *impl, const char *key, struct store_object *obj)
{
    struct call c = { .op = STORE_OP_HEAD, .key = key, .obj = obj };
    return run(impl, &c);
}

static int r_del(void *impl, const char *key)
{
    struct call c = { .op = STORE_OP_DELETE, .key = key };
    return run(impl, &c);
}

static int r_del_many(void *impl, const char *const *keys, size_t n)
{
    struct call c = { .op = STORE_OP_DELETE_MANY, .keys = keys, .len = n };
    return run(impl, &c);
}

static int r_list_page(void *impl, struct store_page *page)
{
    struct call c = {
        .op = STORE_OP_LIST, .page = page, .user_fn = page->fn, .user_arg = page->arg
    };
    page->fn = list_relay;
    page->arg = &c;
    int rc = run(impl, &c);
    page->fn = c.user_fn;
    page->arg = c.user_arg;
    return rc;
}

static int r_copy(void *impl, const char *from, const char *to)
{
    struct call c = { .op = STORE_OP_COPY, .key = from, .key2 = to };
    return run(impl, &c);
}

static int r_copy_source(void *impl, const char *key, struct buf *out)
{
    struct store *inner = ((struct retry *)impl)->inner;
    return inner->ops->copy_source ? inner->ops->copy_source(inner->impl, key, out) : -EXDEV;
}

static int r_mp_begin(void *impl, const char *key, char **upload_id)
{
    struct call c = { .op = STORE_OP_PART, .mp_kind = MP_BEGIN, .key = key, .result = upload_id };
    return run(impl, &c);
}

static int r_mp_part(void *impl, const char *key, const char *upload_id, unsigned partno,
                     const void *data, size_t len, char **etag)
{
    struct call c = { .op = STORE_OP_PART,
                      .mp_kind = MP_PART,
                      .key = key,
                      .upload_id = upload_id,
                      .partno = partno,
                      .data = data,
                      .len = len,
                      .result = etag };
    return run(impl, &c);
}

static int r_mp_complete(void *impl, const char *key, const char *upload_id, char *const *etags,
                         unsigned nparts)
{
    struct call c = { .op = STORE_OP_PART,
                      .mp_kind = MP_COMPLETE,
                      .key = key,
                      .upload_id = upload_id,
                      .etags = etags,
                      .partno = nparts };
    return run(impl, &c);
}

static int r_mp_abort(void *impl, const char *key, const char *upload_id)
{
    struct call c = {
        .op = STORE_OP_PART, .mp_kind = MP_ABORT, .key = key, .upload_id = upload_id
    };
    return run(impl, &c);
}

static void r_stats(void *impl, struct store_stats *st)
{
    struct retry *r = impl;
    for (int i = 0; i < STORE_OP_COUNT; i++) {
        const uint64_t *src = (const uint64_t *)&r->op[i];
        uint64_t *dst = (uint64_t *)&st->op[i];
        for (size_t k = 0; k < sizeof r->op[i] / sizeof(uint64_t); k++)
            dst[k] = __atomic_load_n(&src[k], __ATOMIC_RELAXED);
    }
    pthread_mutex_lock(&r->lock);
    snprintf(st->last_error, sizeof st->last_error, "%s", r->last_error);
    pthread_mutex_unlock(&r->lock);
    if (r->inner->ops->stats)
        r->inner->ops->stats(r->inner->impl, st);
}

static void r_close(void *impl)
{
    struct retry *r = impl;
    store_close(r->inner);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static const struct store_ops retry_ops = {
    .put = r_put,
    .get = r_get,
    .head = r_head,
    .del = r_del,
    .del_many = r_del_many,
    .list_page = r_list_page,
    .copy = r_copy,
    .copy_source = r_copy_source,
    .mp_begin = r_mp_begin,
    .mp_part = r_mp_part,
    .mp_complete = r_mp_complete,
    .mp_abort = r_mp_abort,
    .stats = r_stats,
    .close = r_close,
};

int retry_store_wrap(struct store *inner, struct store **out)
{
    struct retry *r = calloc(1, sizeof *r);
    if (!r) {
        store_close(inner);
        return -ENOMEM;
    }
    r->inner = inner;
    pthread_mutex_init(&r->lock, NULL);
    r->ops = retry_ops;
    if (!inner->ops->mp_begin) /* multipart stays invisible to store.c without a backend for it */
        r->ops.mp_begin = NULL;
    *out = store_new(&r->ops, r, inner->url, &inner->opt);
    return *out ? 0 : -ENOMEM;
}
