/*
 * Snapshots: the whole tree at one instant, as one object in the bucket,
 * snapshots/EEEEEEEE-SSSSSSSSSSSS (epoch and sequence in hex, so listing
 * order is publishing order). The encoding is drawn at the top of
 * snapshot.c. A snapshot names chunks; it is published only after every
 * chunk it names is in the bucket (DESIGN.md, "Bucket layout").
 *
 * Errors: negative errno with the thread's message; -EBADMSG for a snapshot
 * that is damaged or breaks a rule of the format (never half-loaded).
 */
#ifndef CKPT_FS_SNAPSHOT_H
#define CKPT_FS_SNAPSHOT_H

#include <stdint.h>

#include "cache/blocks.h"
#include "cache/codec.h"
#include "cache/remote.h"
#include "cache/store.h"
#include "fs/namespace.h"
#include "util/buf.h"

struct snapshot_id {
    uint64_t epoch, seq;
};

#define SNAPSHOT_PREFIX  "snapshots/"
#define SNAPSHOT_KEY_LEN 40

/* "snapshots/EEEEEEEE-SSSSSSSSSSSS" and back (-EINVAL if not such a key). */
void snapshot_key(struct snapshot_id id, char key[SNAPSHOT_KEY_LEN]);
int snapshot_parse_key(const char *key, struct snapshot_id *id);

/* Whether a was published after b (a later epoch, or a later sequence in
 * the same epoch): the order of keys in a listing. */
int snapshot_newer(struct snapshot_id a, struct snapshot_id b);

/* A snapshot's ID as people see it, "EEEEEEEE-SSSSSSSSSSSS", and back
 * (-EINVAL if text is not one). */
#define SNAPSHOT_ID_LEN 22
void snapshot_id_text(struct snapshot_id id, char text[SNAPSHOT_ID_LEN]);
int snapshot_parse_id(const char *text, struct snapshot_id *id);

/* Calls fn for every snapshot in the bucket (o: its object, with size and
 * time), in publishing order; a non-zero return from fn ends the listing
 * with it. */
typedef int (*snapshot_list_fn)(void *arg, struct snapshot_id id, const struct store_object *o);
int snapshot_list(struct store *s, snapshot_list_fn fn, void *arg);

/* Every snapshot in the bucket, in publishing order (the newest last), with
 * its object's time and size; the caller frees out->v. */
struct snapshot_entry {
    struct snapshot_id id;
    int64_t mtime;
    uint64_t size;
};
struct snapshot_entries {
    struct snapshot_entry *v;
    size_t n, cap;
};
int snapshot_list_all(struct store *s, struct snapshot_entries *out);

/* The newest snapshot in the bucket; -ENOENT if there is none. */
int snapshot_latest(struct store *s, struct snapshot_id *id);

/* Encodes the tree as of the read transaction open on reader (namespace and
 * block tables; dirty blocks by their sealed names). */
int snapshot_encode(sqlite3 *reader, struct blocks *b, struct snapshot_id id, struct buf *out);

/* Puts an encoded snapshot in the bucket, compressed and (with a key)
 * encrypted by codec, created only if absent when if_absent is set. */
int snapshot_publish(struct store *s, struct codec *c, struct snapshot_id id,
                     const struct buf *plain, int if_absent);

/* Fetches and decodes snapshot id into plain (checked as cache/codec.h says). */
int snapshot_fetch(struct store *s, struct codec *c, struct snapshot_id id, struct buf *plain);

/* What a loaded snapshot said about itself. */
struct snapshot_info {
    struct snapshot_id id;
    int64_t created_ns;
    uint32_t block_size;
    uint64_t inodes, files, bytes; /* files: regular ones; bytes: their sizes */
    uint64_t blocks;               /* chunk references */
};

/* What a walk of a snapshot meets, in the encoding's order: every inode,
 * then every entry, xattr and block. A callback returns 0 to go on, or an
 * error that ends the walk. NULL callbacks are skipped. */
struct snapshot_visitor {
    int (*inode)(void *arg, const struct ns_attr *a, const void *target, size_t target_len);
    int (*dentry)(void *arg, uint64_t parent, const char *name, size_t len, uint64_t ino);
    int (*xattr)(void *arg, uint64_t ino, const char *name, size_t name_len, const void *value,
                 size_t value_len);
    int (*block)(void *arg, uint64_t ino, uint64_t idx, const uint8_t name[CODEC_NAME_LEN]);
};

/* Checks every rule of the format on a decoded snapshot (block_size 0: any
 * it states; else it must state this one), then, if v is not NULL, walks it
 * calling v: a snapshot that breaks a rule is never seen in part. */
int snapshot_walk(const struct buf *plain, size_t block_size, const struct snapshot_visitor *v,
                  void *arg, struct snapshot_info *info);

/* Replaces the namespace and block tables with the snapshot's tree: files
 * become REMOTE blocks. Checks every record first; on error nothing is
 * changed. */
int snapshot_load(const struct buf *plain, struct db *db, struct ns *ns, struct blocks *b,
                  struct snapshot_info *info);

/* A follower's move to a newer snapshot: replaces the namespace tables
 * only, and hands the snapshot's blocks to the caller in *refs (from
 * malloc, *n of them, sorted) for blocks_follow. Checks every record first. */
int snapshot_load_tree(const struct buf *plain, struct db *db, struct ns *ns, size_t block_size,
                       struct blocks_ref **refs, size_t *n, struct snapshot_info *info);

#endif
