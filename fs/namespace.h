/*
 * The namespace: inodes, directory entries, symlink targets and extended
 * attributes, in meta.db. Every change is one short transaction. Sizes and
 * times that change with every write are cached by the caller (fs/inodes.c)
 * and written back with ns_set_size_times.
 *
 * Permission checks are the kernel's (the mount uses default_permissions);
 * this module enforces what a file system must: existence, types, emptiness,
 * rename rules, link counts, timestamps, setgid inheritance.
 *
 * Errors: negative errno as POSIX defines them for the matching system call
 * (-ENOENT, -EEXIST, -ENOTDIR, -EISDIR, -ENOTEMPTY, -ENODATA, -ERANGE ...),
 * or -EIO/-ENOSPC with a message when the database fails.
 */
#ifndef CKPT_FS_NAMESPACE_H
#define CKPT_FS_NAMESPACE_H

#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "util/buf.h"
#include "util/db.h"

#define NS_ROOT 1 /* the root directory's inode, as FUSE numbers it */

struct ns;

struct ns_attr {
    uint64_t ino;
    uint32_t mode, uid, gid, nlink;
    uint64_t size, rdev;
    struct timespec atime, mtime, ctime;
};

/* Opens the namespace in db, creating the root directory (owned by uid:gid,
 * mode 0755) in a new one. */
int ns_open(struct db *db, uint32_t uid, uint32_t gid, struct ns **out);
void ns_close(struct ns *ns);

int ns_getattr(struct ns *ns, uint64_t ino, struct ns_attr *out);
int ns_lookup(struct ns *ns, uint64_t parent, const char *name, struct ns_attr *out);

/* Creates name in parent: any file type, per mode; target for a symlink.
 * A new entry in a setgid directory gets the directory's group, and a new
 * subdirectory the setgid bit, as ext4 does. */
int ns_create(struct ns *ns, uint64_t parent, const char *name, uint32_t mode, uint64_t rdev,
              uint32_t uid, uint32_t gid, const char *target, struct ns_attr *out);

int ns_link(struct ns *ns, uint64_t ino, uint64_t parent, const char *name, struct ns_attr *out);

/* Removes a non-directory entry. *ino and *nlink tell the caller what the
 * inode became (nlink 0: gone once nothing has it open). */
int ns_unlink(struct ns *ns, uint64_t parent, const char *name, uint64_t *ino, uint32_t *nlink);

/* Removes an empty directory; *ino is the directory's inode (nlink now 0). */
int ns_rmdir(struct ns *ns, uint64_t parent, const char *name, uint64_t *ino);

/* rename(2) and renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE.
 * A replaced entry's inode and its new link count come back in *victim and
 * *victim_nlink (victim 0 if none). */
int ns_rename(struct ns *ns, uint64_t parent, const char *name, uint64_t newparent,
              const char *newname, unsigned flags, uint64_t *victim, uint32_t *victim_nlink);

int ns_readlink(struct ns *ns, uint64_t ino, struct buf *out);

/* Calls fn with each name ino has (its hard links); non-zero from fn stops. */
int ns_names_of(struct ns *ns, uint64_t ino, int (*fn)(void *arg, const char *name), void *arg);

#define NS_SET_MODE  (1u << 0)
#define NS_SET_UID   (1u << 1)
#define NS_SET_GID   (1u << 2)
#define NS_SET_SIZE  (1u << 3)
#define NS_SET_ATIME (1u << 4)
#define NS_SET_MTIME (1u << 5)
#define NS_SET_CTIME (1u << 6)

/* Sets the fields of a named by mask (ctime moves to now whenever anything
 * but atime changes, unless NS_SET_CTIME gives it); *out gets the result. */
int ns_setattr(struct ns *ns, uint64_t ino, const struct ns_attr *a, unsigned mask,
               struct ns_attr *out);

/* At most max directory entries after cookie off (0: from the start), "."
 * and ".." included, each with the cookie of the entry after it. fn is
 * called without the database lock held and returns non-zero to stop (a
 * full reply buffer); the entry it refused comes again in the next call.
 * Cookies stay valid while entries come and go. */
typedef int (*ns_dirent_fn)(void *arg, const char *name, const struct ns_attr *attr,
                            uint64_t next_off);
int ns_readdir(struct ns *ns, uint64_t dir, uint64_t off, size_t max, ns_dirent_fn fn, void *arg);

/* Deletes an inode with no links left (and its xattrs). */
int ns_delete_inode(struct ns *ns, uint64_t ino);

/* Calls fn for each inode with no links: orphans of a crash while open. */
int ns_orphans(struct ns *ns, void (*fn)(void *arg, uint64_t ino), void *arg);

#define NS_XATTR_CREATE  1
#define NS_XATTR_REPLACE 2
int ns_setxattr(struct ns *ns, uint64_t ino, const char *name, const void *value, size_t size,
                int flags);
int ns_getxattr(struct ns *ns, uint64_t ino, const char *name, struct buf *out);
/* Appends every name, each NUL-terminated, as listxattr(2) returns them. */
int ns_listxattr(struct ns *ns, uint64_t ino, struct buf *out);
int ns_removexattr(struct ns *ns, uint64_t ino, const char *name);

/* ---- snapshots: the whole tree in and out ---- */

/* What a snapshot holds of the namespace, record by record. */
struct ns_visitor {
    int (*inode)(void *arg, const struct ns_attr *a, const void *target, size_t target_len);
    int (*dentry)(void *arg, uint64_t parent, const char *name, size_t name_len, uint64_t ino);
    int (*xattr)(void *arg, uint64_t ino, const char *name, size_t name_len, const void *value,
                 size_t value_len);
    void *arg;
};

/* Visits every linked inode (by number), then every entry (in readdir
 * order), then every xattr, as of the read transaction open on reader. */
int ns_scan_at(sqlite3 *reader, const struct ns_visitor *v);

/* The size of ino as of reader's read transaction (-ENOENT if unlinked). */
int ns_size_at(sqlite3 *reader, uint64_t ino, uint64_t *size);

/* Loading a snapshot into an empty namespace; the caller holds the database
 * lock inside a transaction and checks the records first. */
int ns_load_inode(struct ns *ns, const struct ns_attr *a, const void *target, size_t target_len);
int ns_load_dentry(struct ns *ns, uint64_t parent, const char *name, size_t name_len, uint64_t ino);
int ns_load_xattr(struct ns *ns, uint64_t ino, const char *name, size_t name_len, const void *value,
                  size_t value_len);
/* Empties the namespace (all three tables) before a load. */
int ns_clear(struct ns *ns);

/* Number of inodes, and the sum of file sizes, for statfs. */
int ns_usage(struct ns *ns, uint64_t *inodes, uint64_t *bytes);

#endif
