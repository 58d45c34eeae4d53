/*
 * A fixed pool of worker threads with a bounded queue. Work is submitted in
 * batches: a caller waits for its own batch, not for the whole pool, and
 * gets the batch's first failure back with its message. A full queue makes
 * pool_submit wait, so a producer cannot run ahead of the workers by more
 * than the queue holds (the memory bound for uploads in flight).
 */
#ifndef CKPT_UTIL_POOL_H
#define CKPT_UTIL_POOL_H

#include <pthread.h>
#include <stddef.h>

struct pool;

struct batch {
    pthread_mutex_t lock;
    pthread_cond_t done;
    unsigned pending;
    int rc;        /* the first failure, 0 if none */
    char err[512]; /* its message */
};

/* Starts threads workers with room for max_queued waiting jobs.
 * Returns 0 and *out, or -ENOMEM / -EAGAIN. */
int pool_new(unsigned threads, unsigned max_queued, struct pool **out);

/* Finishes every queued job, then stops the workers. NULL is ignored. */
void pool_free(struct pool *p);

void batch_init(struct batch *b);
void batch_destroy(struct batch *b);

/* Queues fn(arg) as part of b; waits while the queue is full. fn returns 0
 * or a negative errno with the thread's message set. Returns 0 or -ENOMEM. */
int pool_submit(struct pool *p, struct batch *b, int (*fn)(void *arg), void *arg);

/* Waits until every job of b has run; returns the first failure (and sets
 * this thread's message to it) or 0. */
int batch_wait(struct batch *b);

/* Runs fn(ctx, i) for every i below n on threads new workers and waits for
 * all of them: returns the first failure (its message set) or 0. The jobs
 * that ran before a failure stay done; none starts after a submit fails. */
int pool_for_each(unsigned threads, size_t n, int (*fn)(void *ctx, size_t i), void *ctx);

#endif
