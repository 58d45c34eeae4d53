/*
 * The running parts of a writable mount (contract in writer.h).
 *
 * Promotion, step by step (writer_promote):
 *   1. The follower's thread stops, after one last switch to the newest
 *      snapshot if it is behind.
 *   2. The bucket is taken over (bootstrap_promote): the owner object names
 *      this mount with an epoch above the old holder's and every snapshot's.
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

int writer_promote(struct fs *fs, struct bootstrap *b, struct writer **out)
{
    pthread_mutex_lock(&promoting); /* two promotes at once: the second finds it done */
    int rc = fs_following(fs) ? follow_stop(fs->follow, 1)
                              : err_set(-EINVAL, "this mount is not a follower (--follow): "
                                                 "there is nothing to promote");
    if (rc == 0)
        rc = bootstrap_promote(fs, b);
    if (rc == 0 && (rc = writer_start(fs, b, out)) != 0) {
        writer_stop(*out);
        *out = NULL;
    }
    if (rc && fs_following(fs) && follow_resume(fs->follow) == 0)
        log_warn("promotion failed; following again: %s", err_msg(rc));
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
