/*
 * The in-memory inode table: the kernel's references and open handles, and
 * the size and times that writes change, kept here between writes and
 * written to meta.db on fsync, last close, forget and snapshot freeze (a
 * database update per write() would cost more than the write).
 *
 * Lifetime of an inode:
 *   1. It enters the table when the kernel learns of it (lookup, create,
 *      readdirplus) or opens it, and leaves when the kernel has forgotten it
 *      and closed it; leaving flushes its cached fields.
 *   2. An inode whose last link goes (unlink, rmdir, rename over it) stays
 *      in meta.db with nlink 0 while it is in the table (an open file stays
 *      readable); when it leaves, its rows and bytes are deleted. After a
 *      crash, ckptfs deletes such orphans at start-up.
 */
#include "fs.h"

#include <errno.h>
#include <stdlib.h>

#include "util/err.h"
#include "util/log.h"

static struct inode *table_get(struct fs *fs, uint64_t ino, int create)
{
    struct inode *in = hmap_get(fs->inodes, ino, 0);
    if (in || !create)
        return in;
    in = calloc(1, sizeof *in);
    if (!in || hmap_put(fs->inodes, ino, 0, in)) {
        free(in);
        return NULL;
    }
    in->ino = ino;
    pthread_mutex_init(&in->lock, NULL);
    return in;
}

struct inode *inode_get(struct fs *fs, uint64_t ino)
{
    pthread_mutex_lock(&fs->inodes_lock);
    struct inode *in = table_get(fs, ino, 0);
    pthread_mutex_unlock(&fs->inodes_lock);
    return in;
}

int inode_ref(struct fs *fs, uint64_t ino, uint64_t n)
{
    pthread_mutex_lock(&fs->inodes_lock);
    struct inode *in = table_get(fs, ino, 1);
    if (in)
        in->nlookup += n;
    pthread_mutex_unlock(&fs->inodes_lock);
    return in ? 0 : -ENOMEM;
}

int inode_open(struct fs *fs, uint64_t ino)
{
    pthread_mutex_lock(&fs->inodes_lock);
    struct inode *in = table_get(fs, ino, 1);
    if (in)
        in->opens++;
    pthread_mutex_unlock(&fs->inodes_lock);
    return in ? 0 : -ENOMEM;
}

int inode_flush(struct fs *fs, struct inode *in)
{
    pthread_mutex_lock(&in->lock);
    int rc = 0;
    if (in->dirty) {
        struct ns_attr a = { .size = in->size, .mtime = in->mtime, .ctime = in->ctime }, out;
        rc = ns_setattr(fs->ns, in->ino, &a, NS_SET_SIZE | NS_SET_MTIME | NS_SET_CTIME, &out);
        if (rc == 0 || rc == -ENOENT)
            in->dirty = 0;
    }
    pthread_mutex_unlock(&in->lock);
    return rc == -ENOENT ? 0 : rc;
}

/* Rule 1: the last reference is gone; caller holds inodes_lock. Returns the
 * inode number if it left the table. */
static uint64_t leave_if_unused(struct fs *fs, struct inode *in)
{
    if (in->nlookup || in->opens)
        return 0;
    int rc = inode_flush(fs, in);
    if (rc)
        log_warn("inode %llu: %s", (unsigned long long)in->ino, err_msg(rc));
    uint64_t ino = in->ino;
    hmap_del(fs->inodes, ino, 0);
    pthread_mutex_destroy(&in->lock);
    free(in);
    return ino;
}

/* Rule 2, once the inode has left the table. */
void inode_delete_if_unused(struct fs *fs, uint64_t ino)
{
    struct ns_attr a;
    if (inode_get(fs, ino) || ns_getattr(fs->ns, ino, &a) || a.nlink > 0)
        return;
    pthread_rwlock_rdlock(&fs->freeze);
    int rc = blocks_remove(fs->blocks, ino);
    if (rc == 0)
        rc = ns_delete_inode(fs->ns, ino);
    pthread_rwlock_unlock(&fs->freeze);
    if (rc)
        log_warn("deleting unlinked inode %llu: %s", (unsigned long long)ino, err_msg(rc));
    fs_changed(fs);
}

static void drop(struct fs *fs, uint64_t ino, uint64_t forget, int close)
{
    pthread_mutex_lock(&fs->inodes_lock);
    struct inode *in = table_get(fs, ino, 0);
    uint64_t gone = 0;
    if (in) {
        in->nlookup -= forget < in->nlookup ? forget : in->nlookup;
        in->opens -= close && in->opens ? 1 : 0;
        gone = leave_if_unused(fs, in);
    }
    pthread_mutex_unlock(&fs->inodes_lock);
    if (gone) {
        blocks_forget(fs->blocks, gone);
        inode_delete_if_unused(fs, gone);
    }
}

void inode_forget(struct fs *fs, uint64_t ino, uint64_t n)
{
    drop(fs, ino, n, 0);
}

void inode_release(struct fs *fs, uint64_t ino)
{
    drop(fs, ino, 0, 1);
}

/* Under the table lock: the inode may be any entry of a listing, which the
 * kernel may be forgetting (and another thread freeing) right now. */
void inode_overlay(struct fs *fs, struct ns_attr *a)
{
    pthread_mutex_lock(&fs->inodes_lock);
    struct inode *in = table_get(fs, a->ino, 0);
    if (in) {
        pthread_mutex_lock(&in->lock);
        if (in->dirty) {
            a->size = in->size;
            a->mtime = in->mtime;
            a->ctime = in->ctime;
        }
        pthread_mutex_unlock(&in->lock);
    }
    pthread_mutex_unlock(&fs->inodes_lock);
}

int inode_attr(struct fs *fs, uint64_t ino, struct ns_attr *out)
{
    int rc = ns_getattr(fs->ns, ino, out);
    if (rc == 0)
        inode_overlay(fs, out);
    return rc;
}

static void free_inode(void *arg, uint64_t a, uint64_t b, void *v)
{
    (void)arg;
    (void)a;
    (void)b;
    struct inode *in = v;
    pthread_mutex_destroy(&in->lock);
    free(in);
}

void inode_table_free(struct fs *fs)
{
    if (fs->inodes)
        hmap_each(fs->inodes, free_inode, NULL);
    hmap_free(fs->inodes);
    fs->inodes = NULL;
}

struct flush_all {
    struct fs *fs;
    int rc;
};

static void flush_one(void *arg, uint64_t a, uint64_t b, void *v)
{
    (void)a;
    (void)b;
    struct flush_all *f = arg;
    int rc = inode_flush(f->fs, v);
    f->rc = f->rc ? f->rc : rc;
}

int inode_flush_all(struct fs *fs)
{
    struct flush_all f = { fs, 0 };
    pthread_mutex_lock(&fs->inodes_lock);
    hmap_each(fs->inodes, flush_one, &f);
    pthread_mutex_unlock(&fs->inodes_lock);
    return f.rc;
}
