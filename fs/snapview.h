/*
 * MOUNTPOINT/.snapshots: every snapshot in the bucket as a read-only
 * directory, .snapshots/ID/..., so that ls, cat, diff -r and du work on any
 * retained checkpoint. The directory is not listed in the root (a `cp -r`
 * or `du` of the mount does not descend into every snapshot) but can be
 * looked up; nothing under it can be changed (EROFS).
 *
 * A snapshot is loaded when first looked up, into a namespace of its own
 * (CACHE_DIR/views/ID.db, the tables of namespace.h), and its files read
 * through blocks versions (blocks.h): chunks the live tree has on disk under
 * the same inode are read from there, others come from the memory tier or
 * the bucket. A few loaded snapshots are kept; others are loaded again when
 * needed.
 *
 * Inode numbers (FUSE's) under it: bit 63 set, bits 40 to 62 the snapshot's
 * view number (0 for .snapshots itself, whose inode is SNAPVIEW_DIR), bits
 * 0 to 39 the snapshot's own inode number. View numbers last as long as the
 * mount, so the kernel's caches of a snapshot's files stay true.
 *
 * Errors: negative errno as namespace.h's, with the thread's message for
 * a snapshot that cannot be fetched or is damaged (-EIO to the kernel).
 */
#ifndef CKPT_FS_SNAPVIEW_H
#define CKPT_FS_SNAPVIEW_H

#include <stdint.h>

#include "cache/blocks.h"
#include "fs/namespace.h"

#define SNAPVIEW_NAME ".snapshots"
#define SNAPVIEW_BIT  (1ULL << 63)
#define SNAPVIEW_DIR  (SNAPVIEW_BIT | NS_ROOT)

struct fs;
struct snapview;

static inline int snapview_owns(uint64_t ino)
{
    return (ino & SNAPVIEW_BIT) != 0;
}

int snapview_open(struct fs *fs, struct snapview **out);
void snapview_close(struct snapview *sv);

/* name in parent: parent is NS_ROOT (then name is SNAPVIEW_NAME) or one of
 * ours. *out has our inode numbers. */
int snapview_lookup(struct snapview *sv, uint64_t parent, const char *name, struct ns_attr *out);
int snapview_getattr(struct snapview *sv, uint64_t ino, struct ns_attr *out);

/* As ns_readdir. The entries of .snapshots itself carry only their inode
 * number and type: loading every snapshot to list them would cost too much
 * (a caller gives the kernel no attributes for them, so it looks each up). */
int snapview_readdir(struct snapview *sv, uint64_t dir, uint64_t off, size_t max, ns_dirent_fn fn,
                     void *arg);
int snapview_readlink(struct snapview *sv, uint64_t ino, struct buf *out);
int snapview_getxattr(struct snapview *sv, uint64_t ino, const char *name, struct buf *out);
int snapview_listxattr(struct snapview *sv, uint64_t ino, struct buf *out);

/* What a handle of a regular file reads (blocks_read_version). */
int snapview_version(struct snapview *sv, uint64_t ino, struct blocks_version **out);

#endif
