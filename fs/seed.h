/*
 * Seeding (--seed-from URL): a writable mount whose own bucket holds no
 * snapshot yet starts from another bucket's snapshot (its newest, or the
 * one --snapshot names). The seed is only ever read. Every chunk the
 * snapshot names is copied into the mount's own bucket before the mount
 * starts, and the mount then publishes the seeded tree as its first
 * snapshot (bootstrap marks it pending), so its bucket is restorable on its
 * own: deleting the seed later takes nothing away.
 *
 * Errors: negative errno with the thread's message.
 */
#ifndef CKPT_FS_SEED_H
#define CKPT_FS_SEED_H

#include <stddef.h>

#include "fs/fs.h"

/* The seed's block size, from its marker (which must agree with fs's
 * encryption); the mount's own bucket is created with it. */
int seed_block_size(struct fs *fs, size_t *block_size);

/* Copies the chunks of the seed's snapshot into fs's bucket (those not
 * there already) and loads its tree into fs's tables. */
int seed_tree(struct fs *fs);

#endif
