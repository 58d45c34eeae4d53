/* Warm-up (contract in warm.h). */
#include "warm.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/buf.h"
#include "util/err.h"

struct file {
    uint64_t ino, size;
};

struct warm {
    struct fs *fs;
    struct buf files; /* struct file[] */
    struct warm_progress p;
    pthread_t thread;
    int rc, finished;
    int cancel; /* warm_cancel: set once, read by the thread */
};

static size_t nfiles(const struct warm *w)
{
    return w->files.len / sizeof(struct file);
}

static int add_file(struct warm *w, uint64_t ino, uint64_t size)
{
    struct file f = { ino, size };
    w->p.total += blocks_remote_bytes(w->fs->blocks, ino);
    return buf_append(&w->files, &f, sizeof f);
}

struct walk {
    struct warm *w;
    struct buf dirs; /* uint64_t[]: directories still to list */
    uint64_t next;   /* the cookie after the last entry seen */
    int rc;
};

static int walk_entry(void *arg, const char *name, const struct ns_attr *a, uint64_t next_off)
{
    struct walk *k = arg;
    k->next = next_off;
    if (!strcmp(name, ".") || !strcmp(name, ".."))
        return 0;
    if (S_ISREG(a->mode)) {
        struct ns_attr cur = *a;
        inode_overlay(k->w->fs, &cur); /* a size not yet in meta.db */
        k->rc = add_file(k->w, a->ino, cur.size);
    } else if (S_ISDIR(a->mode)) {
        k->rc = buf_append(&k->dirs, &a->ino, sizeof a->ino);
    }
    return k->rc;
}

/* Every regular file under dir, depth first. */
static int walk(struct warm *w, uint64_t dir)
{
    struct walk k = { .w = w };
    int rc = buf_append(&k.dirs, &dir, sizeof dir);
    while (rc >= 0 && !k.rc && k.dirs.len) {
        k.dirs.len -= sizeof dir;
        memcpy(&dir, k.dirs.data + k.dirs.len, sizeof dir);
        k.next = 0;
        for (uint64_t off = 0;; off = k.next) {
            rc = ns_readdir(w->fs->ns, dir, off, 1024, walk_entry, &k);
            if (rc < 0 || k.rc || k.next == off)
                break;
        }
    }
    buf_free(&k.dirs);
    return rc < 0 ? rc : k.rc;
}

/* Room the disk tier could give: all of it but the dirty data. */
static int check_room(struct fs *fs, uint64_t want)
{
    struct blocks_stats bs;
    blocks_get_stats(fs->blocks, &bs);
    uint64_t room = bs.cache_limit > bs.dirty_bytes ? bs.cache_limit - bs.dirty_bytes : 0;
    if (!bs.cache_limit || want <= room)
        return 0;
    return err_set(-ENOSPC,
                   "that needs %llu MiB in the cache, which has room for %llu MiB "
                   "(--cache-size %llu MiB)",
                   (unsigned long long)(want >> 20), (unsigned long long)(room >> 20),
                   (unsigned long long)(bs.cache_limit >> 20));
}

static void *run(void *arg)
{
    struct warm *w = arg;
    const struct file *f = (const struct file *)w->files.data;
    struct batch batch;
    batch_init(&batch);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < nfiles(w) && !__atomic_load_n(&w->cancel, __ATOMIC_RELAXED);
         i++) {
        rc = blocks_warm(w->fs->blocks, &batch, f[i].ino, f[i].size, &w->p.done, &w->cancel);
        __atomic_store_n(&w->p.files_done, i + 1, __ATOMIC_RELAXED);
    }
    int brc = batch_wait(&batch);
    batch_destroy(&batch);
    w->rc = rc ? rc : brc;
    __atomic_store_n(&w->finished, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void warm_free(struct warm *w)
{
    buf_free(&w->files);
    free(w);
}

int warm_start(struct fs *fs, uint64_t ino, struct warm **out)
{
    struct warm *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->fs = fs;
    struct ns_attr a;
    int rc = inode_attr(fs, ino, &a);
    if (rc == 0)
        rc = S_ISREG(a.mode) ? add_file(w, ino, a.size) : S_ISDIR(a.mode) ? walk(w, ino) : 0;
    w->p.files = nfiles(w);
    if (rc == 0)
        rc = check_room(fs, w->p.total);
    if (rc == 0 && pthread_create(&w->thread, NULL, run, w))
        rc = err_set(-EAGAIN, "cannot start the warm-up");
    if (rc) {
        warm_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

static void snapshot_progress(struct warm *w, struct warm_progress *p)
{
    *p = w->p;
    p->done = __atomic_load_n(&w->p.done, __ATOMIC_RELAXED);
    p->files_done = __atomic_load_n(&w->p.files_done, __ATOMIC_RELAXED);
}

int warm_poll(struct warm *w, struct warm_progress *p)
{
    snapshot_progress(w, p);
    return !__atomic_load_n(&w->finished, __ATOMIC_ACQUIRE);
}

void warm_cancel(struct warm *w)
{
    __atomic_store_n(&w->cancel, 1, __ATOMIC_RELAXED);
}

int warm_finish(struct warm *w, struct warm_progress *p)
{
    pthread_join(w->thread, NULL);
    snapshot_progress(w, p);
    int rc = w->rc;
    warm_free(w);
    return rc;
}
