/*
 * Following (contract in follow.h). One switch to a newer snapshot:
 *
 *   1. Fetch it and check every record (a damaged or hostile snapshot is
 *      refused here, and the mount goes on serving the one it has).
 *   2. Set the meta "loaded" to "": a crash from here on makes the next
 *      start load the whole snapshot anew rather than trust half a switch.
 *   3. With fs->freeze held exclusively (no open is taking a version),
 *      replace the namespace tables in one transaction, then move the block
 *      table to the new chunks (blocks_follow): unchanged blocks keep their
 *      cached bytes. If that fails in between, opens fail (EIO) until a
 *      later poll's switch succeeds: a version would mix the two. Reads go on throughout: a handle
 * reads its version's chunks, each block changing under its own lock.
 *   4. "loaded" names the new snapshot; the kernel forgets what it cached
 *      of the inodes it knows (names and attributes it never caches while
 *      following: ops.c replies with no timeout).
 *   5. Warm-up: every chunk of the tree not on disk is fetched into it (as
 *      it is at the start for the snapshot the mount starts with).
 */
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include "follow.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs/warm.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/err.h"
#include "util/log.h"

struct follow {
    struct fs *fs;
    unsigned interval_ms;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int stop, running;
    int warmed;              /* the snapshot served at the start was warmed up */
    struct follow_status st; /* guarded by lock */
};

struct inos {
    uint64_t *v;
    size_t n, cap;
};

static void collect_ino(void *arg, uint64_t ino, uint64_t zero, void *in)
{
    (void)zero;
    (void)in;
    struct inos *l = arg;
    if (array_grow((void **)&l->v, &l->cap, l->n, sizeof *l->v) == 0)
        l->v[l->n++] = ino;
}

/* Step 4: what the kernel cached of the files it knows (pages of a file
 * mmapped before the switch, say) is dropped. Called holding no lock a
 * FUSE request could need. */
static void forget_kernel_caches(struct fs *fs)
{
    struct inos l = { 0 };
    pthread_mutex_lock(&fs->inodes_lock);
    hmap_each(fs->inodes, collect_ino, &l);
    pthread_mutex_unlock(&fs->inodes_lock);
    for (size_t i = 0; fs->se && i < l.n; i++)
        fuse_lowlevel_notify_inval_inode(fs->se, l.v[i], 0, 0);
    free(l.v);
}

static int is_open(void *arg, uint64_t ino)
{
    struct fs *fs = arg;
    pthread_mutex_lock(&fs->inodes_lock);
    struct inode *in = hmap_get(fs->inodes, ino, 0);
    int open = in && in->opens;
    pthread_mutex_unlock(&fs->inodes_lock);
    return open;
}

/* Step 3. */
static int replace_tree(struct fs *fs, const struct buf *plain, uint64_t *changed)
{
    struct blocks_ref *refs = NULL;
    struct snapshot_info info;
    size_t n = 0;
    pthread_rwlock_wrlock(&fs->freeze);
    int rc =
        snapshot_load_tree(plain, fs->db, fs->ns, blocks_block_size(fs->blocks), &refs, &n, &info);
    if (rc == 0) /* the namespace is the new one: opens fail until the blocks are too */
        fs->half_switched = 1;
    if (rc == 0 && (rc = blocks_follow(fs->blocks, refs, n, is_open, fs, changed)) == 0)
        fs->half_switched = 0;
    pthread_rwlock_unlock(&fs->freeze);
    free(refs);
    return rc;
}

/* Steps 1 to 4. */
static int switch_to(struct follow *f, struct snapshot_id id)
{
    struct fs *fs = f->fs;
    struct buf plain = { 0 };
    struct snapshot_info info;
    char text[SNAPSHOT_ID_LEN];
    uint64_t changed = 0;
    snapshot_id_text(id, text);
    int rc = snapshot_fetch(fs->store, fs->codec, id, &plain);
    if (rc == 0)
        rc = snapshot_walk(&plain, blocks_block_size(fs->blocks), NULL, NULL, &info);
    if (rc == 0)
        rc = db_meta_set_text(fs->db, "loaded", "");
    if (rc == 0)
        rc = replace_tree(fs, &plain, &changed);
    if (rc == 0)
        rc = db_meta_set_text(fs->db, "loaded", text);
    buf_free(&plain);
    if (rc)
        return err_set(rc, "following snapshot %s: %s", text, err_msg(rc));
    pthread_mutex_lock(&f->lock);
    f->st.serving = id;
    f->st.switches++;
    f->st.switched_ns = clock_realtime_ns();
    pthread_mutex_unlock(&f->lock);
    forget_kernel_caches(fs);
    log_info("now serving snapshot %s: %llu files, %llu bytes (%llu blocks changed)", text,
             (unsigned long long)info.files, (unsigned long long)info.bytes,
             (unsigned long long)changed);
    return 0;
}

static void set_warming(struct follow *f, int on, const struct warm_progress *p)
{
    pthread_mutex_lock(&f->lock);
    f->st.warming = on;
    f->st.warm_done = p->done;
    f->st.warm_total = p->total;
    pthread_mutex_unlock(&f->lock);
}

static int stopping(struct follow *f)
{
    pthread_mutex_lock(&f->lock);
    int stop = f->stop;
    pthread_mutex_unlock(&f->lock);
    return stop;
}

/* Step 5. A cache too small for the tree is no error: reads fetch the rest.
 * A promotion or an unmount (follow_stop) cuts it short: it waits for the
 * fetches queued, not for the whole tree. */
static void warm_up(struct follow *f)
{
    struct warm *w = NULL;
    struct warm_progress p = { 0 };
    int rc = warm_start(f->fs, NS_ROOT, &w);
    if (rc) {
        log_info("not warming the cache: %s", err_msg(rc));
        return;
    }
    while (warm_poll(w, &p)) {
        set_warming(f, 1, &p);
        if (stopping(f))
            warm_cancel(w);
        struct timespec pause = { 0, 50 * 1000000L };
        nanosleep(&pause, NULL);
    }
    rc = warm_finish(w, &p);
    set_warming(f, 0, &p);
    if (rc)
        log_warn("warming the cache: %s", err_msg(rc));
    else if (p.done < p.total)
        log_info("warm-up stopped at %llu of %llu MiB: the rest is fetched when read",
                 (unsigned long long)(p.done >> 20), (unsigned long long)(p.total >> 20));
}

/* One poll: a switch if the bucket has a newer snapshot, and its warm-up. */
static int poll_once(struct follow *f, int warm)
{
    struct snapshot_id latest, serving;
    pthread_mutex_lock(&f->lock);
    serving = f->st.serving;
    pthread_mutex_unlock(&f->lock);
    int rc = snapshot_latest(f->fs->store, &latest);
    if (rc == -ENOENT)
        return 0;
    if (rc || !snapshot_newer(latest, serving))
        return rc;
    rc = switch_to(f, latest);
    if (rc == 0 && warm)
        warm_up(f);
    return rc;
}

/* The outcome of a poll, logged when it differs from the last one's. */
static void note(struct follow *f, int rc)
{
    char msg[sizeof f->st.last_error] = "";
    if (rc)
        snprintf(msg, sizeof msg, "%s", err_msg(rc));
    pthread_mutex_lock(&f->lock);
    int news = strcmp(msg, f->st.last_error) != 0;
    memcpy(f->st.last_error, msg, sizeof msg);
    pthread_mutex_unlock(&f->lock);
    if (news && rc)
        log_warn("%s", msg);
    else if (news)
        log_info("following again");
}

static void *run(void *arg)
{
    struct follow *f = arg;
    if (!f->warmed) { /* what the mount started with is fetched as a switch's would be */
        f->warmed = 1;
        warm_up(f);
    }
    pthread_mutex_lock(&f->lock);
    while (!f->stop) {
        struct timespec until = clock_deadline_ms(f->interval_ms);
        pthread_cond_timedwait(&f->wake, &f->lock, &until);
        if (f->stop)
            break;
        pthread_mutex_unlock(&f->lock);
        note(f, poll_once(f, 1));
        pthread_mutex_lock(&f->lock);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

int follow_start(struct fs *fs, unsigned interval_ms, struct follow **out)
{
    char loaded[SNAPSHOT_ID_LEN] = "";
    struct follow *f = calloc(1, sizeof *f);
    if (!f)
        return -ENOMEM;
    f->fs = fs;
    f->interval_ms = interval_ms;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->wake, NULL);
    if (db_meta_get_text(fs->db, "loaded", loaded, sizeof loaded) == 0 && loaded[0])
        snapshot_parse_id(loaded, &f->st.serving);
    int rc = follow_resume(f);
    if (rc) {
        follow_free(f);
        return rc;
    }
    *out = f;
    return 0;
}

int follow_resume(struct follow *f)
{
    f->stop = 0;
    if (pthread_create(&f->thread, NULL, run, f))
        return err_set(-EAGAIN, "cannot start the follower's thread");
    f->running = 1;
    return 0;
}

void follow_stop(struct follow *f)
{
    if (!f || !f->running)
        return;
    pthread_mutex_lock(&f->lock);
    f->stop = 1;
    pthread_cond_signal(&f->wake);
    pthread_mutex_unlock(&f->lock);
    pthread_join(f->thread, NULL);
    f->running = 0;
}

int follow_catch_up(struct follow *f)
{
    return poll_once(f, 0);
}

void follow_free(struct follow *f)
{
    if (!f)
        return;
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->wake);
    free(f);
}

void follow_get_status(struct follow *f, struct follow_status *st)
{
    if (!f) {
        memset(st, 0, sizeof *st);
        return;
    }
    pthread_mutex_lock(&f->lock);
    *st = f->st;
    pthread_mutex_unlock(&f->lock);
}
