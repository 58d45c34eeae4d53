#include "pool.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "err.h"

struct job {
    int (*fn)(void *arg);
    void *arg;
    struct batch *batch;
};

struct pool {
    pthread_mutex_t lock;
    pthread_cond_t nonempty, nonfull;
    struct job *ring;
    unsigned cap, head, count;
    int stopping;
    unsigned nthreads;
    pthread_t *threads;
};

void batch_init(struct batch *b)
{
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->done, NULL);
    b->pending = 0;
    b->rc = 0;
    b->err[0] = '\0';
}

void batch_destroy(struct batch *b)
{
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->done);
}

static void batch_finish(struct batch *b, int rc)
{
    pthread_mutex_lock(&b->lock);
    if (rc && !b->rc) {
        b->rc = rc;
        snprintf(b->err, sizeof b->err, "%s", err_msg(rc));
    }
    if (--b->pending == 0)
        pthread_cond_broadcast(&b->done);
    pthread_mutex_unlock(&b->lock);
}

int batch_wait(struct batch *b)
{
    pthread_mutex_lock(&b->lock);
    while (b->pending)
        pthread_cond_wait(&b->done, &b->lock);
    int rc = b->rc;
    if (rc)
        err_set(rc, "%s", b->err);
    pthread_mutex_unlock(&b->lock);
    return rc;
}

static int take(struct pool *p, struct job *j)
{
    pthread_mutex_lock(&p->lock);
    while (!p->count && !p->stopping)
        pthread_cond_wait(&p->nonempty, &p->lock);
    int got = p->count > 0;
    if (got) {
        *j = p->ring[p->head];
        p->head = (p->head + 1) % p->cap;
        p->count--;
        pthread_cond_signal(&p->nonfull);
    }
    pthread_mutex_unlock(&p->lock);
    return got;
}

static void *worker(void *arg)
{
    struct pool *p = arg;
    struct job j;
    while (take(p, &j)) {
        err_clear();
        batch_finish(j.batch, j.fn(j.arg));
    }
    return NULL;
}

static const int faults[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS };

int pool_new(unsigned threads, unsigned max_queued, struct pool **out)
{
    struct pool *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->cap = max_queued ? max_queued : 1;
    p->ring = calloc(p->cap, sizeof *p->ring);
    p->threads = calloc(threads, sizeof *p->threads);
    if (!p->ring || !p->threads) {
        free(p->ring);
        free(p->threads);
        free(p);
        return -ENOMEM;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->nonempty, NULL);
    pthread_cond_init(&p->nonfull, NULL);
    /* Workers take no signals: they are the main thread's to handle (a
     * daemon's SIGTERM, ckptpipe's), but for faults, which must reach the
     * thread that made them. Threads start with the creator's mask. */
    sigset_t mask, old;
    sigfillset(&mask);
    for (size_t i = 0; i < sizeof faults / sizeof *faults; i++)
        sigdelset(&mask, faults[i]);
    pthread_sigmask(SIG_BLOCK, &mask, &old);
    for (; p->nthreads < threads; p->nthreads++)
        if (pthread_create(&p->threads[p->nthreads], NULL, worker, p))
            break;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!p->nthreads) {
        pool_free(p);
        return err_set(-EAGAIN, "cannot start worker threads");
    }
    *out = p;
    return 0;
}

void pool_free(struct pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = 1;
    pthread_cond_broadcast(&p->nonempty);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->nonempty);
    pthread_cond_destroy(&p->nonfull);
    free(p->ring);
    free(p->threads);
    free(p);
}

int pool_submit(struct pool *p, struct batch *b, int (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&b->lock);
    b->pending++;
    pthread_mutex_unlock(&b->lock);
    pthread_mutex_lock(&p->lock);
    while (p->count == p->cap)
        pthread_cond_wait(&p->nonfull, &p->lock);
    p->ring[(p->head + p->count) % p->cap] = (struct job){ fn, arg, b };
    p->count++;
    pthread_cond_signal(&p->nonempty);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

struct each_job {
    int (*fn)(void *ctx, size_t i);
    void *ctx;
    size_t i;
};

static int run_each(void *arg)
{
    struct each_job j = *(struct each_job *)arg;
    free(arg);
    return j.fn(j.ctx, j.i);
}

int pool_for_each(unsigned threads, size_t n, int (*fn)(void *ctx, size_t i), void *ctx)
{
    struct pool *pool;
    struct batch batch;
    int rc = pool_new(threads, 2 * threads, &pool);
    if (rc)
        return rc;
    batch_init(&batch);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct each_job *j = malloc(sizeof *j);
        rc = j ? 0 : -ENOMEM;
        if (j)
            *j = (struct each_job){ fn, ctx, i };
        if (rc == 0 && (rc = pool_submit(pool, &batch, run_each, j)) != 0)
            free(j);
    }
    int waited = batch_wait(&batch);
    batch_destroy(&batch);
    pool_free(pool);
    return rc ? rc : waited;
}
