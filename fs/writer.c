/*
 * The running parts of a writable mount (contract in writer.h).
 *
 * Promotion, step by step (writer_promote):
 *   1. The follower's thread stops.
 *   2. The bucket is taken over (bootstrap_promote): the owner object names
 *      this mount with an epoch above the old holder's and every snapshot's,
 *      so the old writer publishes nothing more once it sees it. Then one
 *      last switch to the newest snapshot, if the follower is behind (no
 *      warm-up: the old writer must not go on publishing meanwhile).
 *   3. The writer's parts start; the mount stops following (new opens use
 *      the page cache again) and accepts changes.
 *   4. A snapshot of the new epoch is published at once. Snapshot IDs order
 *      by epoch first, so it is the newest, and so is every later one of
 *      ours, whatever the old writer still publishes before it notices.
 */
#include "writer.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "fs/follow.h"
#include "fs/publisher.h"
#include "util/clock.h"
#include "util/err.h"
#include "util/log.h"

#define UPLOAD_THREADS  8
#define UPLOAD_QUIET_MS 200 /* a full block untouched this long goes up ahead of the snapshot */

struct writer {
    struct fs *fs;
    struct bootstrap *b;
    pthread_t heartbeat;
    pthread_mutex_t lock;
    pthread_cond_t stop_cond;
    int stop, beating;
};

static void *beat(void *arg)
{
    struct writer *w = arg;
    pthread_mutex_lock(&w->lock);
    while (!w->stop) {
        struct timespec until = clock_deadline_ms(OWNER_LEASE / 3 * 1000);
        pthread_cond_timedwait(&w->stop_cond, &w->lock, &until);
        if (w->stop)
            break;
        pthread_mutex_unlock(&w->lock);
        int rc = owner_heartbeat(w->fs->store, &w->b->claim);
        if (rc == -ESTALE)
            publisher_fence(w->fs->pub, rc);
        else if (rc)
            log_error("owner heartbeat: %s", err_msg(rc));
        pthread_mutex_lock(&w->lock);
        w->stop |= rc == -ESTALE; /* the bucket is someone else's: nothing more to say */
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static void kick_publisher(void *arg)
{
    struct fs *fs = arg;
    if (fs->pub)
        publisher_kick(fs->pub);
}

static int start_parts(struct writer *w)
{
    struct fs *fs = w->fs;
    w->b->pub.claim = &w->b->claim;
    int rc = pool_new(UPLOAD_THREADS, 2 * UPLOAD_THREADS, &fs->uploads);
    if (rc == 0)
        blocks_on_pressure(fs->blocks, kick_publisher, fs);
    if (rc == 0)
        rc = publisher_start(fs, &w->b->pub, &fs->pub);
    if (rc == 0)
        rc = blocks_upload_ahead(fs->blocks, fs->uploads, UPLOAD_QUIET_MS);
    if (rc == 0 && pthread_create(&w->heartbeat, NULL, beat, w))
        rc = err_set(-EAGAIN, "cannot start the heartbeat thread");
    w->beating = rc == 0;
    return rc;
}

int writer_start(struct fs *fs, struct bootstrap *b, struct writer **out)
{
    struct writer *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->fs = fs;
    w->b = b;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->stop_cond, NULL);
    *out = w; /* writer_stop undoes what started, even on error */
    return start_parts(w);
}

int writer_stop(struct writer *w)
{
    if (!w)
        return 0;
    struct fs *fs = w->fs;
    if (w->beating) {
        pthread_mutex_lock(&w->lock);
        w->stop = 1;
        pthread_cond_signal(&w->stop_cond);
        pthread_mutex_unlock(&w->lock);
        pthread_join(w->heartbeat, NULL);
    }
    blocks_upload_stop(fs->blocks);
    /* Unmounted: everything left goes to the bucket before the daemon exits. */
    int final = publisher_stop(fs->pub);
    fs->pub = NULL;
    pool_free(fs->uploads);
    fs->uploads = NULL;
    if (final == 0) {
        db_meta_set_int(fs->db, "clean", 1);
        owner_release(fs->store, &w->b->claim);
    } else {
        log_error("the last snapshot could not be published: %s; the cache in %s keeps the "
                  "changes for the next mount",
                  err_msg(final), fs->cache_dir);
    }
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->stop_cond);
    free(w);
    return final;
}

static pthread_mutex_t promoting = PTHREAD_MUTEX_INITIALIZER;
static int promotions_ended;

void writer_promotions_end(void)
{
    pthread_mutex_lock(&promoting);
    promotions_ended = 1;
    pthread_mutex_unlock(&promoting);
}

/* Steps 2 and 3, the follower's thread stopped. *seized: the bucket is
 * ours from then on, whatever fails after. */
static int take_over(struct fs *fs, struct bootstrap *b, struct writer **out, int *seized)
{
    int rc = bootstrap_promote(fs, b, seized);
    int behind = rc ? 0 : follow_catch_up(fs->follow);
    if (behind) /* a newer snapshot that cannot be read: the one served is the last good one */
        log_warn("promoting from the snapshot served: %s", err_msg(behind));
    if (rc == 0 && (rc = writer_start(fs, b, out)) != 0) {
        writer_stop(*out);
        *out = NULL;
    }
    return rc;
}

int writer_promote(struct fs *fs, struct bootstrap *b, struct writer **out)
{
    int seized = 0, rc;
    pthread_mutex_lock(&promoting); /* two promotes at once: the second finds it done */
    if (promotions_ended)
        rc = err_set(-ESHUTDOWN, "the mount is being unmounted");
    else if (!fs_following(fs))
        rc = err_set(-EINVAL, "this mount is not a follower (--follow): there is nothing to "
                              "promote");
    else {
        follow_stop(fs->follow);
        rc = take_over(fs, b, out, &seized);
    }
    if (rc && !seized && fs_following(fs) && !promotions_ended && follow_resume(fs->follow) == 0)
        log_warn("promotion failed; following again: %s", err_msg(rc));
    else if (rc && seized)
        err_wrap(rc, "the bucket was taken over, but this mount could not start writing (it "
                     "stays read-only; run ckptctl promote again)");
    if (rc == 0) {
        __atomic_store_n(&fs->following, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&fs->read_only, 0, __ATOMIC_RELEASE);
        if ((rc = publisher_sync(fs->pub)) != 0)
            err_wrap(rc, "promoted, but the new epoch's first snapshot is not in the bucket yet "
                         "(the publisher tries again)");
    }
    pthread_mutex_unlock(&promoting);
    if (rc == 0)
        log_info("promoted: this mount writes %s now, epoch %llu", fs->url,
                 (unsigned long long)b->claim.epoch);
    return rc;
}
