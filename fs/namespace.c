/*
 * The namespace in meta.db (contract in namespace.h). Schema, version 1:
 *
 *   inodes(ino INTEGER PRIMARY KEY AUTOINCREMENT, mode, uid, gid, nlink, size, rdev,
 *          atime, mtime, ctime,        -- nanoseconds since 1970
 *          target BLOB)                -- a symlink's target
 *   dentries(id INTEGER PRIMARY KEY AUTOINCREMENT, parent, name BLOB, ino,
 *          UNIQUE(parent, name))
 *   xattrs(ino, name BLOB, value BLOB, PRIMARY KEY(ino, name))
 *
 * Invariants:
 *   1. Every inode but the root has as many dentries as its nlink says,
 *      except directories, whose nlink is 2 plus their subdirectories (as
 *      ext4 counts), and which have exactly one dentry.
 *   2. An inode with nlink 0 has no dentries; it stays while open or known
 *      to the kernel, and is deleted by the caller (ns_delete_inode).
 *   3. A dentry's id never changes while the entry exists (a rename moves
 *      the row) and is never reused (AUTOINCREMENT): readdir cookies are ids,
 *      so entries added during a listing come after it, and none repeats.
 *   4. Inode numbers are never reused either, so a number the kernel or an
 *      NFS client still remembers cannot come to mean another file.
 */
#include "namespace.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h> /* RENAME_NOREPLACE, RENAME_EXCHANGE */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/err.h"

#define ATTR_COLS     "ino, mode, uid, gid, nlink, size, rdev, atime, mtime, ctime"
#define COOKIE_DOT    1
#define COOKIE_DOTDOT 2

enum stmt_id {
    S_GET,
    S_LOOKUP,
    S_FIND,
    S_ADD_INODE,
    S_ADD_DENTRY,
    S_DEL_DENTRY,
    S_MOVE_DENTRY,
    S_RELINK_DENTRY,
    S_NLINK,
    S_TOUCH,
    S_CTIME,
    S_HAS_CHILD,
    S_SET_ATTR,
    S_TARGET,
    S_READDIR,
    S_PARENT,
    S_DEL_INODE,
    S_DEL_XATTRS,
    S_ORPHANS,
    S_XGET,
    S_XPUT,
    S_XLIST,
    S_XDEL,
    S_USAGE,
    S_NAMES,
    S_COUNT
};

static const char *const sql[S_COUNT] = {
    [S_GET] = "SELECT " ATTR_COLS " FROM inodes WHERE ino = ?",
    [S_LOOKUP] = "SELECT i.ino, i.mode, i.uid, i.gid, i.nlink, i.size, i.rdev, i.atime, i.mtime, "
                 "i.ctime FROM dentries d JOIN inodes i ON i.ino = d.ino "
                 "WHERE d.parent = ? AND d.name = ?",
    [S_FIND] = "SELECT d.id, d.ino, i.mode FROM dentries d JOIN inodes i ON i.ino = d.ino "
               "WHERE d.parent = ? AND d.name = ?",
    [S_ADD_INODE] = "INSERT INTO inodes(mode, uid, gid, nlink, size, rdev, atime, mtime, ctime, "
                    "target) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    [S_ADD_DENTRY] = "INSERT INTO dentries(parent, name, ino) VALUES(?, ?, ?)",
    [S_DEL_DENTRY] = "DELETE FROM dentries WHERE id = ?",
    [S_MOVE_DENTRY] = "UPDATE dentries SET parent = ?, name = ? WHERE id = ?",
    [S_RELINK_DENTRY] = "UPDATE dentries SET ino = ? WHERE id = ?",
    [S_NLINK] = "UPDATE inodes SET nlink = nlink + ?, ctime = ? WHERE ino = ?",
    [S_TOUCH] = "UPDATE inodes SET mtime = ?, ctime = ? WHERE ino = ?",
    [S_CTIME] = "UPDATE inodes SET ctime = ? WHERE ino = ?",
    [S_HAS_CHILD] = "SELECT 1 FROM dentries WHERE parent = ? LIMIT 1",
    [S_SET_ATTR] = "UPDATE inodes SET mode = ?, uid = ?, gid = ?, size = ?, atime = ?, mtime = ?, "
                   "ctime = ? WHERE ino = ?",
    [S_TARGET] = "SELECT target FROM inodes WHERE ino = ?",
    [S_READDIR] = "SELECT d.id, d.name, i.ino, i.mode, i.uid, i.gid, i.nlink, i.size, i.rdev, "
                  "i.atime, i.mtime, i.ctime FROM dentries d JOIN inodes i ON i.ino = d.ino "
                  "WHERE d.parent = ? AND d.id > ? ORDER BY d.id",
    [S_PARENT] = "SELECT parent FROM dentries WHERE ino = ? LIMIT 1",
    [S_DEL_INODE] = "DELETE FROM inodes WHERE ino = ? AND nlink = 0",
    [S_DEL_XATTRS] = "DELETE FROM xattrs WHERE ino = ?",
    [S_ORPHANS] = "SELECT ino FROM inodes WHERE nlink = 0",
    [S_XGET] = "SELECT value FROM xattrs WHERE ino = ? AND name = ?",
    [S_XPUT] = "INSERT OR REPLACE INTO xattrs(ino, name, value) VALUES(?, ?, ?)",
    [S_XLIST] = "SELECT name FROM xattrs WHERE ino = ? ORDER BY name",
    [S_XDEL] = "DELETE FROM xattrs WHERE ino = ? AND name = ?",
    [S_NAMES] = "SELECT name FROM dentries WHERE ino = ?",
    [S_USAGE] = "SELECT count(*), total(CASE WHEN mode & 61440 = 32768 THEN size END) FROM inodes",
};

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS inodes(ino INTEGER PRIMARY KEY AUTOINCREMENT, mode INTEGER NOT "
    "NULL, "
    "uid INTEGER NOT NULL, gid INTEGER NOT NULL, nlink INTEGER NOT NULL, size INTEGER NOT NULL, "
    "rdev INTEGER NOT NULL, atime INTEGER NOT NULL, mtime INTEGER NOT NULL, "
    "ctime INTEGER NOT NULL, target BLOB);"
    "CREATE TABLE IF NOT EXISTS dentries(id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL, UNIQUE(parent, name));"
    "CREATE INDEX IF NOT EXISTS dentries_by_parent ON dentries(parent, id);"
    "CREATE INDEX IF NOT EXISTS dentries_by_ino ON dentries(ino);"
    "CREATE TABLE IF NOT EXISTS xattrs(ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB, "
    "PRIMARY KEY(ino, name)) WITHOUT ROWID;";

struct ns {
    struct db *db;
    sqlite3_stmt *st[S_COUNT];
};

/* ---- helpers ---- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timespec to_ts(int64_t ns)
{
    int64_t s = ns / 1000000000, r = ns % 1000000000;
    if (r < 0) {
        s--;
        r += 1000000000;
    }
    return (struct timespec){ .tv_sec = s, .tv_nsec = r };
}

static int64_t from_ts(struct timespec ts)
{
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static sqlite3_stmt *st(struct ns *ns, enum stmt_id id)
{
    sqlite3_reset(ns->st[id]);
    sqlite3_clear_bindings(ns->st[id]);
    return ns->st[id];
}

static void bind_name(sqlite3_stmt *s, int col, const char *name)
{
    sqlite3_bind_blob(s, col, name, (int)strlen(name), SQLITE_STATIC);
}

static void read_attr(sqlite3_stmt *s, int col, struct ns_attr *a)
{
    a->ino = (uint64_t)sqlite3_column_int64(s, col);
    a->mode = (uint32_t)sqlite3_column_int64(s, col + 1);
    a->uid = (uint32_t)sqlite3_column_int64(s, col + 2);
    a->gid = (uint32_t)sqlite3_column_int64(s, col + 3);
    a->nlink = (uint32_t)sqlite3_column_int64(s, col + 4);
    a->size = (uint64_t)sqlite3_column_int64(s, col + 5);
    a->rdev = (uint64_t)sqlite3_column_int64(s, col + 6);
    a->atime = to_ts(sqlite3_column_int64(s, col + 7));
    a->mtime = to_ts(sqlite3_column_int64(s, col + 8));
    a->ctime = to_ts(sqlite3_column_int64(s, col + 9));
}

/* Steps s expecting at most one row: 1 row, 0 none, or an error. */
static int step_row(struct ns *ns, sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        return 1;
    return rc == SQLITE_DONE ? 0 : db_fail(db_handle(ns->db), rc, sqlite3_sql(s));
}

static int begin(struct ns *ns)
{
    db_lock(ns->db);
    int rc = db_exec(ns->db, "BEGIN IMMEDIATE");
    if (rc)
        db_unlock(ns->db);
    return rc;
}

static int end(struct ns *ns, int rc)
{
    int c = db_exec(ns->db, rc ? "ROLLBACK" : "COMMIT");
    db_unlock(ns->db);
    return rc ? rc : c;
}

/* ---- reads (caller holds the lock) ---- */

static int get_locked(struct ns *ns, uint64_t ino, struct ns_attr *out)
{
    sqlite3_stmt *s = st(ns, S_GET);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)ino);
    int rc = step_row(ns, s);
    if (rc == 1)
        read_attr(s, 0, out);
    sqlite3_reset(s);
    return rc == 1 ? 0 : rc == 0 ? -ENOENT : rc;
}

struct dentry {
    int64_t id;
    uint64_t ino;
    uint32_t mode;
};

static int find_locked(struct ns *ns, uint64_t parent, const char *name, struct dentry *d)
{
    sqlite3_stmt *s = st(ns, S_FIND);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)parent);
    bind_name(s, 2, name);
    int rc = step_row(ns, s);
    if (rc == 1) {
        d->id = sqlite3_column_int64(s, 0);
        d->ino = (uint64_t)sqlite3_column_int64(s, 1);
        d->mode = (uint32_t)sqlite3_column_int64(s, 2);
    }
    sqlite3_reset(s);
    return rc == 1 ? 0 : rc == 0 ? -ENOENT : rc;
}

int ns_getattr(struct ns *ns, uint64_t ino, struct ns_attr *out)
{
    db_lock(ns->db);
    int rc = get_locked(ns, ino, out);
    db_unlock(ns->db);
    return rc;
}

int ns_lookup(struct ns *ns, uint64_t parent, const char *name, struct ns_attr *out)
{
    db_lock(ns->db);
    sqlite3_stmt *s = st(ns, S_LOOKUP);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)parent);
    bind_name(s, 2, name);
    int rc = step_row(ns, s);
    if (rc == 1)
        read_attr(s, 0, out);
    sqlite3_reset(s);
    db_unlock(ns->db);
    return rc == 1 ? 0 : rc == 0 ? -ENOENT : rc;
}

/* ---- small updates (caller holds the lock) ---- */

static int run_ii(struct ns *ns, enum stmt_id id, int64_t a, int64_t b)
{
    sqlite3_stmt *s = st(ns, id);
    sqlite3_bind_int64(s, 1, a);
    sqlite3_bind_int64(s, 2, b);
    return db_run(s);
}

static int add_nlink(struct ns *ns, uint64_t ino, int delta, int64_t t)
{
    sqlite3_stmt *s = st(ns, S_NLINK);
    sqlite3_bind_int(s, 1, delta);
    sqlite3_bind_int64(s, 2, t);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)ino);
    return db_run(s);
}

/* A directory's entries changed: its mtime and ctime move. */
static int touch_dir(struct ns *ns, uint64_t dir, int64_t t)
{
    sqlite3_stmt *s = st(ns, S_TOUCH);
    sqlite3_bind_int64(s, 1, t);
    sqlite3_bind_int64(s, 2, t);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)dir);
    return db_run(s);
}

static int add_dentry(struct ns *ns, uint64_t parent, const char *name, uint64_t ino)
{
    sqlite3_stmt *s = st(ns, S_ADD_DENTRY);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)parent);
    bind_name(s, 2, name);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)ino);
    return db_run(s);
}

static int is_dir_locked(struct ns *ns, uint64_t ino, uint32_t *mode)
{
    struct ns_attr a;
    int rc = get_locked(ns, ino, &a);
    if (rc == 0)
        *mode = a.mode;
    return rc ? rc : S_ISDIR(a.mode) ? 0 : -ENOTDIR;
}

/* ---- creating ---- */

static int insert_inode(struct ns *ns, uint32_t mode, uint32_t uid, uint32_t gid, uint64_t rdev,
                        const char *target, int64_t t, uint64_t *ino)
{
    sqlite3_stmt *s = st(ns, S_ADD_INODE);
    sqlite3_bind_int64(s, 1, mode);
    sqlite3_bind_int64(s, 2, uid);
    sqlite3_bind_int64(s, 3, gid);
    sqlite3_bind_int(s, 4, S_ISDIR(mode) ? 2 : 1);
    /* A symlink's size is its target's length, as lstat(2) reports it. */
    sqlite3_bind_int64(s, 5, target ? (sqlite3_int64)strlen(target) : 0);
    sqlite3_bind_int64(s, 6, (sqlite3_int64)rdev);
    for (int col = 7; col <= 9; col++)
        sqlite3_bind_int64(s, col, t);
    if (target)
        sqlite3_bind_blob(s, 10, target, (int)strlen(target), SQLITE_STATIC);
    int rc = db_run(s);
    *ino = (uint64_t)sqlite3_last_insert_rowid(db_handle(ns->db));
    return rc;
}

int ns_create(struct ns *ns, uint64_t parent, const char *name, uint32_t mode, uint64_t rdev,
              uint32_t uid, uint32_t gid, const char *target, struct ns_attr *out)
{
    int64_t t = now_ns();
    uint32_t pmode;
    struct ns_attr p;
    uint64_t ino = 0;
    int rc = begin(ns);
    if (rc)
        return rc;
    rc = is_dir_locked(ns, parent, &pmode);
    if (rc == 0 && (rc = get_locked(ns, parent, &p)) == 0 && (p.mode & S_ISGID)) {
        gid = p.gid; /* BSD group semantics in setgid directories, as ext4 */
        if (S_ISDIR(mode))
            mode |= S_ISGID;
    }
    struct dentry d;
    if (rc == 0 && (rc = find_locked(ns, parent, name, &d)) != -ENOENT)
        rc = rc ? rc : -EEXIST;
    else if (rc == -ENOENT)
        rc = insert_inode(ns, mode, uid, gid, rdev, target, t, &ino);
    if (rc == 0)
        rc = add_dentry(ns, parent, name, ino);
    if (rc == 0 && S_ISDIR(mode))
        rc = add_nlink(ns, parent, 1, t);
    if (rc == 0)
        rc = touch_dir(ns, parent, t);
    if (rc == 0)
        rc = get_locked(ns, ino, out);
    return end(ns, rc);
}

int ns_link(struct ns *ns, uint64_t ino, uint64_t parent, const char *name, struct ns_attr *out)
{
    int64_t t = now_ns();
    uint32_t pmode;
    struct dentry d;
    int rc = begin(ns);
    if (rc)
        return rc;
    rc = is_dir_locked(ns, parent, &pmode);
    if (rc == 0 && (rc = get_locked(ns, ino, out)) == 0 && S_ISDIR(out->mode))
        rc = -EPERM;
    if (rc == 0 && (rc = find_locked(ns, parent, name, &d)) != -ENOENT)
        rc = rc ? rc : -EEXIST;
    else if (rc == -ENOENT)
        rc = add_dentry(ns, parent, name, ino);
    if (rc == 0)
        rc = add_nlink(ns, ino, 1, t);
    if (rc == 0)
        rc = touch_dir(ns, parent, t);
    if (rc == 0)
        rc = get_locked(ns, ino, out);
    return end(ns, rc);
}

/* ---- removing ---- */

static int has_children(struct ns *ns, uint64_t dir)
{
    sqlite3_stmt *s = st(ns, S_HAS_CHILD);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)dir);
    int rc = step_row(ns, s);
    sqlite3_reset(s);
    return rc;
}

/* Drops dentry d from parent; the inode loses the link (a directory all of them). */
static int drop_entry(struct ns *ns, uint64_t parent, const struct dentry *d, int64_t t)
{
    sqlite3_stmt *s = st(ns, S_DEL_DENTRY);
    sqlite3_bind_int64(s, 1, d->id);
    int rc = db_run(s);
    if (rc == 0 && S_ISDIR(d->mode)) {
        rc = add_nlink(ns, d->ino, -2, t);
        if (rc == 0)
            rc = add_nlink(ns, parent, -1, t);
    } else if (rc == 0) {
        rc = add_nlink(ns, d->ino, -1, t);
    }
    return rc ? rc : touch_dir(ns, parent, t);
}

int ns_unlink(struct ns *ns, uint64_t parent, const char *name, uint64_t *ino, uint32_t *nlink)
{
    struct dentry d;
    struct ns_attr a;
    int rc = begin(ns);
    if (rc)
        return rc;
    rc = find_locked(ns, parent, name, &d);
    if (rc == 0 && S_ISDIR(d.mode))
        rc = -EISDIR;
    if (rc == 0)
        rc = drop_entry(ns, parent, &d, now_ns());
    if (rc == 0 && (rc = get_locked(ns, d.ino, &a)) == 0) {
        *ino = d.ino;
        *nlink = a.nlink;
    }
    return end(ns, rc);
}

int ns_rmdir(struct ns *ns, uint64_t parent, const char *name, uint64_t *ino)
{
    struct dentry d;
    int rc = begin(ns);
    if (rc)
        return rc;
    rc = find_locked(ns, parent, name, &d);
    if (rc == 0 && !S_ISDIR(d.mode))
        rc = -ENOTDIR;
    if (rc == 0 && (rc = has_children(ns, d.ino)) == 1)
        rc = -ENOTEMPTY;
    if (rc == 0)
        rc = drop_entry(ns, parent, &d, now_ns());
    *ino = d.ino;
    return end(ns, rc);
}

/* ---- rename ---- */

static int set_ctime(struct ns *ns, uint64_t ino, int64_t t)
{
    return run_ii(ns, S_CTIME, t, (int64_t)ino);
}

/* A directory moving from one parent to another moves its ".." link too. */
static int move_dir_link(struct ns *ns, const struct dentry *d, uint64_t from, uint64_t to,
                         int64_t t)
{
    if (!S_ISDIR(d->mode) || from == to)
        return 0;
    int rc = add_nlink(ns, from, -1, t);
    return rc ? rc : add_nlink(ns, to, 1, t);
}

static int exchange(struct ns *ns, uint64_t p1, const struct dentry *a, uint64_t p2,
                    const struct dentry *b, int64_t t)
{
    int rc = run_ii(ns, S_RELINK_DENTRY, (int64_t)b->ino, a->id);
    if (rc == 0)
        rc = run_ii(ns, S_RELINK_DENTRY, (int64_t)a->ino, b->id);
    if (rc == 0)
        rc = move_dir_link(ns, a, p1, p2, t);
    if (rc == 0)
        rc = move_dir_link(ns, b, p2, p1, t);
    if (rc == 0)
        rc = set_ctime(ns, a->ino, t);
    return rc ? rc : set_ctime(ns, b->ino, t);
}

/* May src replace dst? The rules of rename(2). */
static int replace_check(struct ns *ns, const struct dentry *src, const struct dentry *dst)
{
    if (S_ISDIR(src->mode) && !S_ISDIR(dst->mode))
        return -ENOTDIR;
    if (!S_ISDIR(src->mode) && S_ISDIR(dst->mode))
        return -EISDIR;
    if (S_ISDIR(dst->mode)) {
        int rc = has_children(ns, dst->ino);
        return rc == 1 ? -ENOTEMPTY : rc;
    }
    return 0;
}

static int rename_locked(struct ns *ns, uint64_t p1, const char *n1, uint64_t p2, const char *n2,
                         unsigned flags, uint64_t *victim, uint32_t *victim_nlink)
{
    struct dentry src, dst;
    uint32_t mode;
    int64_t t = now_ns();
    int rc = is_dir_locked(ns, p2, &mode);
    if (rc == 0)
        rc = find_locked(ns, p1, n1, &src);
    if (rc)
        return rc;
    int have_dst = (rc = find_locked(ns, p2, n2, &dst)) == 0;
    if (rc && rc != -ENOENT)
        return rc;
    if (flags & RENAME_EXCHANGE)
        return have_dst ? exchange(ns, p1, &src, p2, &dst, t) : -ENOENT;
    if (have_dst && (flags & RENAME_NOREPLACE))
        return -EEXIST;
    if (have_dst && dst.ino == src.ino)
        return 0; /* two links to one file: rename(2) does nothing */
    if (have_dst &&
        ((rc = replace_check(ns, &src, &dst)) != 0 || (rc = drop_entry(ns, p2, &dst, t)) != 0))
        return rc;
    sqlite3_stmt *s = st(ns, S_MOVE_DENTRY);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)p2);
    bind_name(s, 2, n2);
    sqlite3_bind_int64(s, 3, src.id);
    if ((rc = db_run(s)) != 0 || (rc = move_dir_link(ns, &src, p1, p2, t)) != 0 ||
        (rc = set_ctime(ns, src.ino, t)) != 0)
        return rc;
    if (have_dst) {
        struct ns_attr v;
        if ((rc = get_locked(ns, dst.ino, &v)) != 0)
            return rc;
        *victim = dst.ino;
        *victim_nlink = v.nlink;
    }
    return 0;
}

int ns_rename(struct ns *ns, uint64_t parent, const char *name, uint64_t newparent,
              const char *newname, unsigned flags, uint64_t *victim, uint32_t *victim_nlink)
{
    *victim = 0;
    *victim_nlink = 0;
    if ((flags & RENAME_EXCHANGE) && (flags & RENAME_NOREPLACE))
        return -EINVAL;
    if (flags & ~(unsigned)(RENAME_EXCHANGE | RENAME_NOREPLACE))
        return -EINVAL;
    int rc = begin(ns);
    if (rc)
        return rc;
    rc = rename_locked(ns, parent, name, newparent, newname, flags, victim, victim_nlink);
    int64_t t = now_ns();
    if (rc == 0)
        rc = touch_dir(ns, parent, t);
    if (rc == 0 && newparent != parent)
        rc = touch_dir(ns, newparent, t);
    return end(ns, rc);
}

int ns_names_of(struct ns *ns, uint64_t ino, int (*fn)(void *arg, const char *name), void *arg)
{
    char name[NAME_MAX + 1];
    db_lock(ns->db);
    sqlite3_stmt *s = st(ns, S_NAMES);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)ino);
    int rc, stop = 0;
    while (!stop && (rc = step_row(ns, s)) == 1) {
        snprintf(name, sizeof name, "%.*s", sqlite3_column_bytes(s, 0),
                 (const char *)sqlite3_column_blob(s, 0));
        stop = fn(arg, name);
    }
    sqlite3_reset(s);
    db_unlock(ns->db);
    return rc < 0 ? rc : 0;
}

/* ---- attributes ---- */

int ns_readlink(struct ns *ns, uint64_t ino, struct buf *out)
{
    db_lock(ns->db);
    sqlite3_stmt *s = st(ns, S_TARGET);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)ino);
    int rc = step_row(ns, s);
    const void *p = rc == 1 ? sqlite3_column_blob(s, 0) : NULL;
    if (rc == 1)
        rc = p ? buf_append(out, p, (size_t)sqlite3_column_bytes(s, 0)) : -EINVAL;
    else if (rc == 0)
        rc = -ENOENT;
    sqlite3_reset(s);
    db_unlock(ns->db);
    return rc;
}

static void apply(struct ns_attr *cur, const struct ns_attr *a, unsigned mask)
{
    if (mask & NS_SET_MODE)
        cur->mode = (cur->mode & S_IFMT) | (a->mode & ~(uint32_t)S_IFMT);
    if (mask & NS_SET_UID)
        cur->uid = a->uid;
    if (mask & NS_SET_GID)
        cur->gid = a->gid;
    if (mask & NS_SET_SIZE)
        cur->size = a->size;
    if (mask & NS_SET_ATIME)
        cur->atime = a->atime;
    if (mask & NS_SET_MTIME)
        cur->mtime = a->mtime;
    if (mask & NS_SET_CTIME)
        cur->ctime = a->ctime;
    else if (mask & ~NS_SET_ATIME)
        cur->ctime = to_ts(now_ns());
}

int ns_setattr(struct ns *ns, uint64_t ino, const struct ns_attr *a, unsigned mask,
               struct ns_attr *out)
{
    db_lock(ns->db);
    int rc = get_locked(ns, ino, out);
    if (rc == 0) {
        apply(out, a, mask);
        sqlite3_stmt *s = st(ns, S_SET_ATTR);
        sqlite3_bind_int64(s, 1, out->mode);
        sqlite3_bind_int64(s, 2, out->uid);
        sqlite3_bind_int64(s, 3, out->gid);
        sqlite3_bind_int64(s, 4, (sqlite3_int64)out->size);
        sqlite3_bind_int64(s, 5, from_ts(out->atime));
        sqlite3_bind_int64(s, 6, from_ts(out->mtime));
        sqlite3_bind_int64(s, 7, from_ts(out->ctime));
        sqlite3_bind_int64(s, 8, (sqlite3_int64)ino);
        rc = db_run(s);
    }
    db_unlock(ns->db);
    return rc;
}

/* ---- directories ---- */

static uint64_t parent_of(struct ns *ns, uint64_t dir)
{
    sqlite3_stmt *s = st(ns, S_PARENT);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)dir);
    uint64_t p = step_row(ns, s) == 1 ? (uint64_t)sqlite3_column_int64(s, 0) : dir;
    sqlite3_reset(s);
    return p;
}

/* Entries are read under the database lock and handed to the caller after
 * it is released: the caller's callback may need the database itself. */
struct dirent_row {
    char name[NAME_MAX + 1];
    struct ns_attr attr;
    uint64_t next_off;
};

struct dir_rows {
    struct dirent_row *v;
    size_t n, max;
};

static int add_row(struct dir_rows *r, const char *name, int len, uint64_t next_off)
{
    if (r->n == r->max)
        return 1;
    struct dirent_row *e = &r->v[r->n++];
    snprintf(e->name, sizeof e->name, "%.*s", len, name);
    e->next_off = next_off;
    return 0;
}

/* "." and "..", which live in no table. */
static int dots(struct ns *ns, uint64_t dir, uint64_t off, struct dir_rows *r)
{
    int rc = 0;
    if (off < COOKIE_DOT && (rc = get_locked(ns, dir, &r->v[r->n].attr)) == 0)
        add_row(r, ".", 1, COOKIE_DOT);
    if (rc == 0 && off < COOKIE_DOTDOT && r->n < r->max &&
        (rc = get_locked(ns, parent_of(ns, dir), &r->v[r->n].attr)) == 0)
        add_row(r, "..", 2, COOKIE_DOTDOT);
    return rc;
}

static int read_rows(struct ns *ns, uint64_t dir, uint64_t off, struct dir_rows *r)
{
    uint32_t mode;
    int rc = is_dir_locked(ns, dir, &mode);
    if (rc == 0)
        rc = dots(ns, dir, off, r);
    sqlite3_stmt *s = st(ns, S_READDIR);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)dir);
    sqlite3_bind_int64(s, 2, off > COOKIE_DOTDOT ? (sqlite3_int64)(off - COOKIE_DOTDOT) : 0);
    while (rc == 0 && r->n < r->max && (rc = step_row(ns, s)) == 1) {
        read_attr(s, 2, &r->v[r->n].attr);
        rc = add_row(r, (const char *)sqlite3_column_blob(s, 1), sqlite3_column_bytes(s, 1),
                     (uint64_t)sqlite3_column_int64(s, 0) + COOKIE_DOTDOT);
    }
    sqlite3_reset(s);
    return rc < 0 ? rc : 0;
}

int ns_readdir(struct ns *ns, uint64_t dir, uint64_t off, size_t max, ns_dirent_fn fn, void *arg)
{
    struct dir_rows r = { calloc(max ? max : 1, sizeof *r.v), 0, max };
    if (!r.v)
        return -ENOMEM;
    db_lock(ns->db);
    int rc = read_rows(ns, dir, off, &r);
    db_unlock(ns->db);
    for (size_t i = 0; rc == 0 && i < r.n; i++)
        if (fn(arg, r.v[i].name, &r.v[i].attr, r.v[i].next_off))
            break;
    free(r.v);
    return rc;
}

/* ---- inode lifetime ---- */

int ns_delete_inode(struct ns *ns, uint64_t ino)
{
    int rc = begin(ns);
    if (rc)
        return rc;
    sqlite3_stmt *s = st(ns, S_DEL_INODE);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)ino);
    rc = db_run(s);
    if (rc == 0) {
        s = st(ns, S_DEL_XATTRS);
        sqlite3_bind_int64(s, 1, (sqlite3_int64)ino);
        rc = db_run(s);
    }
    return end(ns, rc);
}

int ns_orphans(struct ns *ns, void (*fn)(void *arg, uint64_t ino), void *arg)
{
    uint64_t *v = NULL;
    size_t n = 0, cap = 0;
    db_lock(ns->db);
    sqlite3_stmt *s = st(ns, S_ORPHANS);
    int rc;
    while ((rc = step_row(ns, s)) == 1) {
        if (n == cap) {
            uint64_t *p = realloc(v, (cap = cap ? cap * 2 : 16) * sizeof *v);
            if (!p) {
                rc = -ENOMEM;
                break;
            }
            v = p;
        }
        v[n++] = (uint64_t)sqlite3_column_int64(s, 0);
    }
    sqlite3_reset(s);
    db_unlock(ns->db);
    /* fn runs without the lock: it deletes, which takes it. */
    for (size_t i = 0; rc == 0 && i < n; i++)
        fn(arg, v[i]);
    free(v);
    return rc;
}

/* ---- extended attributes ---- */

static int xattr_exists(struct ns *ns, uint64_t ino, const char *name)
{
    sqlite3_stmt *s = st(ns, S_XGET);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)ino);
    bind_name(s, 2, name);
    int rc = step_row(ns, s);
    sqlite3_reset(s);
    return rc;
}

int ns_setxattr(struct ns *ns, uint64_t ino, const char *name, const void *value, size_t size,
                int flags)
{
    db_lock(ns->db);
    int rc = xattr_exists(ns, ino, name);
    if (rc == 1 && (flags & NS_XATTR_CREATE))
        rc = -EEXIST;
    else if (rc == 0 && (flags & NS_XATTR_REPLACE))
        rc = -ENODATA;
    if (rc >= 0) {
        sqlite3_stmt *s = st(ns, S_XPUT);
        sqlite3_bind_int64(s, 1, (sqlite3_int64)ino);
        bind_name(s, 2, name);
        sqlite3_bind_blob(s, 3, size ? value : "", (int)size, SQLITE_STATIC);
        rc = db_run(s);
    }
    if (rc == 0)
        rc = set_ctime(ns, ino, now_ns());
    db_unlock(ns->db);
    return rc;
}

int ns_getxattr(struct ns *ns, uint64_t ino, const char *name, struct buf *out)
{
    db_lock(ns->db);
    sqlite3_stmt *s = st(ns, S_XGET);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)ino);
    bind_name(s, 2, name);
    int rc = step_row(ns, s);
    if (rc == 1)
        rc = buf_append(out, sqlite3_column_blob(s, 0), (size_t)sqlite3_column_bytes(s, 0));
    else if (rc == 0)
        rc = -ENODATA;
    sqlite3_reset(s);
    db_unlock(ns->db);
    return rc;
}

int ns_listxattr(struct ns *ns, uint64_t ino, struct buf *out)
{
    db_lock(ns->db);
    sqlite3_stmt *s = st(ns, S_XLIST);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)ino);
    int rc;
    while ((rc = step_row(ns, s)) == 1) {
        rc = buf_append(out, sqlite3_column_blob(s, 0), (size_t)sqlite3_column_bytes(s, 0));
        if (rc == 0)
            rc = buf_append(out, "", 1);
        if (rc)
            break;
    }
    sqlite3_reset(s);
    db_unlock(ns->db);
    return rc;
}

int ns_removexattr(struct ns *ns, uint64_t ino, const char *name)
{
    db_lock(ns->db);
    int rc = xattr_exists(ns, ino, name);
    if (rc == 0)
        rc = -ENODATA;
    if (rc == 1) {
        sqlite3_stmt *s = st(ns, S_XDEL);
        sqlite3_bind_int64(s, 1, (sqlite3_int64)ino);
        bind_name(s, 2, name);
        rc = db_run(s);
    }
    if (rc == 0)
        rc = set_ctime(ns, ino, now_ns());
    db_unlock(ns->db);
    return rc;
}

int ns_usage(struct ns *ns, uint64_t *inodes, uint64_t *bytes)
{
    db_lock(ns->db);
    sqlite3_stmt *s = st(ns, S_USAGE);
    int rc = step_row(ns, s);
    if (rc == 1) {
        *inodes = (uint64_t)sqlite3_column_int64(s, 0);
        *bytes = (uint64_t)sqlite3_column_double(s, 1);
        rc = 0;
    }
    sqlite3_reset(s);
    db_unlock(ns->db);
    return rc;
}

/* ---- snapshots ---- */

static int scan_query(sqlite3 *reader, const char *q,
                      int (*row)(sqlite3_stmt *s, const struct ns_visitor *v),
                      const struct ns_visitor *v)
{
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(reader, q, -1, &s, NULL);
    if (rc != SQLITE_OK)
        return db_fail(reader, rc, q);
    int err = 0;
    while (!err && (rc = sqlite3_step(s)) == SQLITE_ROW)
        err = row(s, v);
    if (!err && rc != SQLITE_DONE)
        err = db_fail(reader, rc, q);
    sqlite3_finalize(s);
    return err;
}

static int inode_row(sqlite3_stmt *s, const struct ns_visitor *v)
{
    struct ns_attr a;
    read_attr(s, 0, &a);
    return v->inode(v->arg, &a, sqlite3_column_blob(s, 10), (size_t)sqlite3_column_bytes(s, 10));
}

static int dentry_row(sqlite3_stmt *s, const struct ns_visitor *v)
{
    return v->dentry(v->arg, (uint64_t)sqlite3_column_int64(s, 0),
                     (const char *)sqlite3_column_blob(s, 1), (size_t)sqlite3_column_bytes(s, 1),
                     (uint64_t)sqlite3_column_int64(s, 2));
}

static int xattr_row(sqlite3_stmt *s, const struct ns_visitor *v)
{
    return v->xattr(v->arg, (uint64_t)sqlite3_column_int64(s, 0),
                    (const char *)sqlite3_column_blob(s, 1), (size_t)sqlite3_column_bytes(s, 1),
                    sqlite3_column_blob(s, 2), (size_t)sqlite3_column_bytes(s, 2));
}

int ns_scan_at(sqlite3 *reader, const struct ns_visitor *v)
{
    int rc =
        scan_query(reader, "SELECT " ATTR_COLS ", target FROM inodes WHERE nlink > 0 ORDER BY ino",
                   inode_row, v);
    if (rc == 0)
        rc =
            scan_query(reader, "SELECT parent, name, ino FROM dentries ORDER BY id", dentry_row, v);
    if (rc == 0)
        rc = scan_query(reader,
                        "SELECT x.ino, x.name, x.value FROM xattrs x JOIN inodes i "
                        "ON i.ino = x.ino WHERE i.nlink > 0 ORDER BY x.ino, x.name",
                        xattr_row, v);
    return rc;
}

int ns_size_at(sqlite3 *reader, uint64_t ino, uint64_t *size)
{
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(reader, "SELECT size FROM inodes WHERE ino = ? AND nlink > 0", -1,
                                &s, NULL);
    if (rc != SQLITE_OK)
        return db_fail(reader, rc, "file size");
    sqlite3_bind_int64(s, 1, (sqlite3_int64)ino);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        *size = (uint64_t)sqlite3_column_int64(s, 0);
    int err = rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : db_fail(reader, rc, "file size");
    sqlite3_finalize(s);
    return err;
}

int ns_load_inode(struct ns *ns, const struct ns_attr *a, const void *target, size_t target_len)
{
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(db_handle(ns->db),
                                "INSERT INTO inodes(ino, mode, uid, gid, nlink, size, rdev, atime, "
                                "mtime, ctime, target) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                -1, &s, NULL);
    if (rc != SQLITE_OK)
        return db_fail(db_handle(ns->db), rc, "load inode");
    int64_t v[] = { (int64_t)a->ino,   a->mode,          a->uid,           a->gid,
                    a->nlink,          (int64_t)a->size, (int64_t)a->rdev, from_ts(a->atime),
                    from_ts(a->mtime), from_ts(a->ctime) };
    for (int i = 0; i < 10; i++)
        sqlite3_bind_int64(s, i + 1, v[i]);
    if (target)
        sqlite3_bind_blob(s, 11, target, (int)target_len, SQLITE_STATIC);
    rc = db_run(s);
    sqlite3_finalize(s);
    return rc;
}

int ns_load_dentry(struct ns *ns, uint64_t parent, const char *name, size_t name_len, uint64_t ino)
{
    sqlite3_stmt *s = st(ns, S_ADD_DENTRY);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)parent);
    sqlite3_bind_blob(s, 2, name, (int)name_len, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)ino);
    return db_run(s);
}

int ns_load_xattr(struct ns *ns, uint64_t ino, const char *name, size_t name_len, const void *value,
                  size_t value_len)
{
    sqlite3_stmt *s = st(ns, S_XPUT);
    sqlite3_bind_int64(s, 1, (sqlite3_int64)ino);
    sqlite3_bind_blob(s, 2, name, (int)name_len, SQLITE_STATIC);
    sqlite3_bind_blob(s, 3, value_len ? value : "", (int)value_len, SQLITE_STATIC);
    return db_run(s);
}

int ns_clear(struct ns *ns)
{
    return db_exec(ns->db, "DELETE FROM dentries; DELETE FROM xattrs; DELETE FROM inodes;");
}

/* ---- lifetime ---- */

static int make_root(struct ns *ns, uint32_t uid, uint32_t gid)
{
    struct ns_attr a;
    int rc = get_locked(ns, NS_ROOT, &a);
    if (rc != -ENOENT)
        return rc;
    uint64_t ino;
    rc = insert_inode(ns, S_IFDIR | 0755, uid, gid, 0, NULL, now_ns(), &ino);
    if (rc == 0 && ino != NS_ROOT)
        rc = err_set(-EIO, "cache database: the root directory got inode %llu",
                     (unsigned long long)ino);
    return rc;
}

int ns_open(struct db *db, uint32_t uid, uint32_t gid, struct ns **out)
{
    struct ns *ns = calloc(1, sizeof *ns);
    if (!ns)
        return -ENOMEM;
    ns->db = db;
    db_lock(db);
    int rc = db_exec(db, schema);
    for (int i = 0; rc == 0 && i < S_COUNT; i++)
        rc = db_prepare(db, sql[i], &ns->st[i]);
    if (rc == 0)
        rc = make_root(ns, uid, gid);
    db_unlock(db);
    if (rc) {
        ns_close(ns);
        return rc;
    }
    *out = ns;
    return 0;
}

void ns_close(struct ns *ns)
{
    if (!ns)
        return;
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(ns->st[i]);
    free(ns);
}
