/*
 * The publisher (contract in publisher.h). One publish, step by step:
 *
 *   1. Freeze: with fs->freeze held exclusively (no change in progress),
 *      write cached inode sizes to meta.db, mark the dirty blocks frozen,
 *      and open a read transaction on our own connection: it sees the tree
 *      exactly as it is at this instant, T. Release the lock: writers go on.
 *   2. Seal: every block dirty at T is captured as it was at T (blocks.c),
 *      named and uploaded unless the bucket has it (deduplication).
 *   3. Encode the tree of T, naming the sealed chunks, and put it under
 *      snapshots/EPOCH-SEQ. Chunks are in the bucket before the snapshot
 *      that names them, so a reader that sees a snapshot can read it all.
 *   4. Commit: blocks not written since T become clean; the sequence moves on.
 * Just before the put of step 3, the owner object is read: if another mount
 * holds the bucket now, the publish fails and the publisher is fenced
 * (publisher.h).
 * A failure at any step aborts the publish: the blocks stay dirty and the
 * next publish carries them. Nothing already in the bucket is overwritten.
 *
 * Waiting callers share publishes: each takes a ticket; a publish covers
 * every ticket taken before its freeze (step 1).
 */
#include "publisher.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/clock.h"
#include "util/err.h"
#include "util/log.h"

struct publisher {
    struct fs *fs;
    struct publisher_options opt;
    sqlite3 *reader;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    uint64_t tickets, covered; /* taken, and covered by finished publishes */
    int last_rc;
    int stopping, stopped;
    uint64_t published_changes; /* fs->changes at the last published freeze */
    struct snapshot_id next;
    struct publisher_status st;
};

/* Step 1. Returns 1 if there is something to publish, 0 if not. */
static int freeze(struct publisher *p, uint64_t *changes)
{
    struct fs *fs = p->fs;
    pthread_rwlock_wrlock(&fs->freeze);
    *changes = __atomic_load_n(&fs->changes, __ATOMIC_RELAXED);
    int rc = *changes == p->published_changes ? 0 : inode_flush_all(fs);
    if (rc == 0 && *changes != p->published_changes) {
        blocks_freeze(fs->blocks);
        rc = sqlite3_exec(p->reader, "BEGIN; SELECT count(*) FROM inodes;", NULL, NULL, NULL);
        rc = rc == SQLITE_OK ? 1 : db_fail(p->reader, rc, "snapshot read transaction");
    }
    pthread_rwlock_unlock(&fs->freeze);
    return rc;
}

static int size_at(void *arg, uint64_t ino, uint64_t *size)
{
    return ns_size_at(arg, ino, size);
}

/* Steps 2 and 3, inside the read transaction of step 1. */
static int seal_and_put(struct publisher *p)
{
    struct fs *fs = p->fs;
    struct buf plain = { 0 };
    int rc = blocks_seal(fs->blocks, fs->uploads, size_at, p->reader);
    if (rc == 0)
        rc = snapshot_encode(p->reader, fs->blocks, p->next, &plain);
    sqlite3_exec(p->reader, "COMMIT", NULL, NULL, NULL);
    if (rc == 0 && p->opt.claim && (rc = owner_check(fs->store, p->opt.claim)) == -ESTALE)
        publisher_fence(p, rc);
    if (rc == 0)
        rc = snapshot_publish(fs->store, fs->codec, p->next, &plain, p->opt.if_absent);
    if (rc == -EEXIST) { /* create-if-absent refused: another writer has our sequence */
        rc = err_set(-ESTALE, "snapshot %08llx-%012llx was published by another writer",
                     (unsigned long long)p->next.epoch, (unsigned long long)p->next.seq);
        publisher_fence(p, rc);
    }
    buf_free(&plain);
    return rc;
}

/* Step 4, and the record of it. */
static int commit(struct publisher *p, uint64_t changes)
{
    int rc = blocks_commit(p->fs->blocks);
    if (rc == 0)
        rc = db_meta_set_int(p->fs->db, "seq", (int64_t)p->next.seq);
    pthread_mutex_lock(&p->lock);
    p->published_changes = changes;
    p->st.last = p->next;
    p->st.last_ns = clock_realtime_ns();
    p->st.published++;
    p->st.last_error[0] = '\0';
    p->st.last_error_ns = 0;
    p->next.seq++;
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* Retention after a publish: a failure is worth a warning, not a failed
 * publish (the snapshot is in the bucket; the next publish tries again). */
static void let_go(struct publisher *p)
{
    unsigned deleted;
    if (!retention_set(&p->opt.keep))
        return;
    int rc =
        retention_apply(p->fs->store, &p->opt.keep, clock_realtime_ns() / 1000000000, &deleted);
    if (rc)
        log_warn("deleting old snapshots: %s", err_msg(rc));
    else if (deleted)
        log_debug("deleted %u old snapshots", deleted);
}

static int publish(struct publisher *p)
{
    uint64_t changes;
    pthread_mutex_lock(&p->lock);
    int fenced = p->st.fenced;
    char why[sizeof p->st.last_error];
    memcpy(why, p->st.last_error, sizeof why);
    pthread_mutex_unlock(&p->lock);
    if (fenced)
        return err_set(-ESTALE, "%s", why);
    int rc = freeze(p, &changes);
    if (rc <= 0)
        return rc;
    pthread_mutex_lock(&p->lock);
    p->st.publishing = 1;
    pthread_mutex_unlock(&p->lock);
    rc = seal_and_put(p);
    if (rc == 0)
        rc = commit(p, changes);
    else
        blocks_abort(p->fs->blocks);
    if (rc == 0)
        let_go(p);
    pthread_mutex_lock(&p->lock);
    p->st.publishing = 0;
    if (rc) {
        snprintf(p->st.last_error, sizeof p->st.last_error, "%s", err_msg(rc));
        p->st.last_error_ns = clock_realtime_ns();
    }
    pthread_mutex_unlock(&p->lock);
    if (rc && rc != -ESTALE)
        log_error("publishing a snapshot: %s", err_msg(rc));
    return rc;
}

void publisher_fence(struct publisher *p, int why)
{
    if (!p)
        return;
    char msg[sizeof p->st.last_error];
    snprintf(msg, sizeof msg, "%s", err_msg(why));
    pthread_mutex_lock(&p->lock);
    int first = !p->st.fenced;
    p->st.fenced = 1;
    memcpy(p->st.last_error, msg, sizeof msg);
    p->st.last_error_ns = clock_realtime_ns();
    pthread_mutex_unlock(&p->lock);
    __atomic_store_n(&p->fs->read_only, 1, __ATOMIC_RELEASE);
    if (first)
        log_error("%s: this mount publishes no more snapshots and is read-only now; changes "
                  "it had not published stay in %s",
                  msg, p->fs->cache_dir);
}

/* Sleeps until a ticket is waiting, the interval passed with changes pending,
 * or a stop; returns the tickets a publish now would cover. */
static uint64_t wait_for_work(struct publisher *p, int failed)
{
    struct timespec until = clock_deadline_ms((int64_t)p->opt.interval_ms * (failed ? 2 : 1));
    pthread_mutex_lock(&p->lock);
    while (!p->stopping && p->tickets == p->covered &&
           pthread_cond_timedwait(&p->wake, &p->lock, &until) == 0)
        ;
    uint64_t covering = p->tickets;
    pthread_mutex_unlock(&p->lock);
    return covering;
}

static void *run(void *arg)
{
    struct publisher *p = arg;
    int failed = 0;
    for (;;) {
        uint64_t covering = wait_for_work(p, failed);
        int rc = publish(p);
        failed = rc != 0;
        pthread_mutex_lock(&p->lock);
        p->covered = covering;
        p->last_rc = rc;
        pthread_cond_broadcast(&p->done);
        int stop = p->stopping && p->covered == p->tickets;
        if (stop)
            p->stopped = 1;
        pthread_mutex_unlock(&p->lock);
        if (stop)
            return NULL;
    }
}

int publisher_sync(struct publisher *p)
{
    if (!p)
        return err_set(-EROFS, "a read-only mount publishes nothing");
    pthread_mutex_lock(&p->lock);
    if (p->stopped) {
        pthread_mutex_unlock(&p->lock);
        return 0;
    }
    uint64_t ticket = ++p->tickets;
    pthread_cond_signal(&p->wake);
    while (p->covered < ticket)
        pthread_cond_wait(&p->done, &p->lock);
    int rc = p->last_rc;
    char msg[256];
    snprintf(msg, sizeof msg, "%s", p->st.last_error);
    pthread_mutex_unlock(&p->lock);
    return rc ? err_set(rc, "%s", msg) : 0;
}

void publisher_kick(struct publisher *p)
{
    pthread_mutex_lock(&p->lock);
    if (!p->stopped) {
        p->tickets++;
        pthread_cond_signal(&p->wake);
    }
    pthread_mutex_unlock(&p->lock);
}

int publisher_stop(struct publisher *p)
{
    if (!p)
        return 0;
    pthread_mutex_lock(&p->lock);
    p->stopping = 1;
    p->tickets++;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    int rc = p->last_rc;
    sqlite3_close_v2(p->reader);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p);
    return rc;
}

void publisher_get_status(struct publisher *p, struct publisher_status *st)
{
    if (!p) {
        memset(st, 0, sizeof *st);
        return;
    }
    pthread_mutex_lock(&p->lock);
    *st = p->st;
    pthread_mutex_unlock(&p->lock);
}

int publisher_start(struct fs *fs, const struct publisher_options *opt, struct publisher **out)
{
    struct publisher *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->fs = fs;
    p->opt = *opt;
    p->next = opt->next;
    p->published_changes = __atomic_load_n(&fs->changes, __ATOMIC_RELAXED) - (opt->pending ? 1 : 0);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    int rc = db_open_reader(fs->db_path, &p->reader);
    if (rc == 0 && pthread_create(&p->thread, NULL, run, p))
        rc = err_set(-EAGAIN, "cannot start the publisher thread");
    if (rc) {
        sqlite3_close_v2(p->reader);
        free(p);
        return rc;
    }
    *out = p;
    return 0;
}
