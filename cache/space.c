/* The disk tier's budget (contract in space.h). */
#include "space.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "util/clock.h"
#include "util/err.h"

struct space {
    pthread_mutex_t lock;
    pthread_cond_t room;     /* writers wait here */
    pthread_cond_t pressure; /* the evictor waits here */
    struct space_stats st;
    uint64_t wanted; /* bytes waiting writers asked for */
    uint64_t headroom;
};

int space_new(uint64_t limit, struct space **out)
{
    struct space *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->room, NULL);
    pthread_cond_init(&s->pressure, NULL);
    s->st.limit = limit;
    s->headroom = limit / 10;
    *out = s;
    return 0;
}

void space_free(struct space *s)
{
    if (!s)
        return;
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->room);
    pthread_cond_destroy(&s->pressure);
    free(s);
}

static int fits(const struct space *s, uint64_t bytes)
{
    return !s->st.limit || s->st.used + s->st.reserved + bytes <= s->st.limit;
}

void space_add(struct space *s, int64_t delta)
{
    pthread_mutex_lock(&s->lock);
    s->st.used = delta < 0 && (uint64_t)-delta > s->st.used ? 0 : s->st.used + (uint64_t)delta;
    if (delta < 0)
        pthread_cond_broadcast(&s->room);
    else if (!fits(s, s->headroom / 2))
        pthread_cond_signal(&s->pressure);
    pthread_mutex_unlock(&s->lock);
}

int space_reserve(struct space *s, uint64_t bytes, int64_t wait_ms)
{
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    if (!fits(s, bytes) && wait_ms > 0) {
        struct timespec until = clock_deadline_ms(wait_ms);
        s->st.waiting++;
        s->st.waits++;
        s->wanted += bytes;
        while (!fits(s, bytes) && rc != ETIMEDOUT) {
            pthread_cond_signal(&s->pressure);
            rc = pthread_cond_timedwait(&s->room, &s->lock, &until);
        }
        s->wanted -= bytes;
        s->st.waiting--;
    }
    rc = fits(s, bytes) ? 0 : -ENOSPC;
    if (rc == 0)
        s->st.reserved += bytes;
    else if (wait_ms > 0)
        s->st.timeouts++;
    pthread_mutex_unlock(&s->lock);
    if (rc && wait_ms > 0)
        return err_set(rc,
                       "the cache is full of data not yet in the bucket, and no upload freed "
                       "room for %lld s",
                       (long long)(wait_ms / 1000));
    return rc ? err_set(rc, "the cache is full") : 0;
}

void space_release(struct space *s, uint64_t bytes)
{
    pthread_mutex_lock(&s->lock);
    s->st.reserved -= bytes < s->st.reserved ? bytes : s->st.reserved;
    pthread_cond_broadcast(&s->room);
    pthread_mutex_unlock(&s->lock);
}

static uint64_t excess(const struct space *s)
{
    if (!s->st.limit)
        return 0;
    uint64_t want = s->st.used + s->st.reserved + s->wanted;
    uint64_t low = s->st.limit > s->headroom ? s->st.limit - s->headroom : 0;
    return want > low ? want - low : 0;
}

uint64_t space_await_excess(struct space *s, int64_t ms)
{
    pthread_mutex_lock(&s->lock);
    if (!excess(s)) {
        struct timespec until = clock_deadline_ms(ms);
        pthread_cond_timedwait(&s->pressure, &s->lock, &until);
    }
    uint64_t n = excess(s);
    pthread_mutex_unlock(&s->lock);
    return n;
}

void space_wake(struct space *s)
{
    pthread_mutex_lock(&s->lock);
    pthread_cond_broadcast(&s->pressure);
    pthread_cond_broadcast(&s->room);
    pthread_mutex_unlock(&s->lock);
}

void space_get_stats(struct space *s, struct space_stats *st)
{
    pthread_mutex_lock(&s->lock);
    *st = s->st;
    pthread_mutex_unlock(&s->lock);
}
