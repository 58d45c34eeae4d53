/*
 * Checkpoints of a pipeline in its storage directory: every view's state,
 * every input's position and every output's length, at the end of a step.
 * The layout and the commit order are drawn in checkpoint.c; they follow
 * Feldera's: immutable state files shared between checkpoints, a directory
 * per checkpoint, each file written, fsynced and renamed into place, and a
 * catalog renamed into place last (the commit). Name the catalog,
 * CATALOG_NAME, in ckptfs's --publish-on and each commit is in the bucket
 * when it returns.
 *
 * Errors: negative errno with the thread's message: the failing call's
 * (-EIO, -ENOSPC, -EROFS ...) naming the file for I/O, -EBADMSG for a catalog, manifest or batch
 * that is damaged (never a silent fresh start), -ENOENT for a checkpoint that is not there.
 */
#ifndef CKPT_ENGINE_CHECKPOINT_H
#define CKPT_ENGINE_CHECKPOINT_H

#include <stdint.h>

#include "engine/ivm.h"

#define CATALOG_NAME "catalog.json"
#define CKPT_ID_LEN  17 /* 16 hex digits */

struct ckpt;

/* A position in an input (a byte offset and its line number) or the length
 * of an output, by connector name (a table's or a view's). */
struct ckpt_pos {
    const char *name;
    uint64_t offset, line;
};

/* What a checkpoint holds besides the views' state. */
struct ckpt_image {
    uint64_t step;
    struct ckpt_pos *inputs, *outputs; /* ckpt_load allocates them (ckpt_image_free) */
    size_t ninputs, noutputs;
};
void ckpt_image_free(struct ckpt_image *img);

/* Opens dir for views v[0..n) (their names given), reading its catalog if
 * there is one. Unless read_only: dir is created if missing, and what no
 * checkpoint in it refers to (files of a checkpoint that never committed)
 * is deleted. A read-only one loads checkpoints, never saves them. */
int ckpt_open(const char *dir, const char *const *names, size_t n, int read_only,
              struct ckpt **out);
void ckpt_close(struct ckpt *c);

/* A read-only one becomes writable, as ckpt_open would have opened it (a
 * standby activated: its storage was promoted). */
int ckpt_writable(struct ckpt *c);

/* Reads the catalog again (a standby looking for newer checkpoints); on an
 * error the checkpoints known stay as they were. */
int ckpt_refresh(struct ckpt *c);

/* The step the oldest kept checkpoint was taken after; 0 if there is none
 * or it is not known (a read-only one does not read manifests). */
uint64_t ckpt_oldest_step(const struct ckpt *c);

/* The newest checkpoint's ID, or -ENOENT if there is none. */
int ckpt_latest(struct ckpt *c, char id[CKPT_ID_LEN]);

/* Loads checkpoint id into the new views m[0..n) and img; the chain of
 * batches it names becomes the one later checkpoints continue. */
int ckpt_load(struct ckpt *c, const char *id, struct ivm **m, struct ckpt_image *img);

/* Writes a checkpoint of m[0..n) and img and commits it; *id gets its ID,
 * *written the bytes of state it wrote. Between steps only. On failure
 * nothing is committed and the next checkpoint writes every view whole. */
int ckpt_save(struct ckpt *c, struct ivm **m, const struct ckpt_image *img, char id[CKPT_ID_LEN],
              uint64_t *written);

#endif
