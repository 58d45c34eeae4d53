/*
 * The running parts of a writable mount: the upload pool, uploading ahead,
 * the publisher and the owner heartbeat. A writable mount starts them once
 * mounted; a follower starts them when promoted (writer_promote).
 *
 * Fencing: a writer that finds another mount holds the bucket now (its
 * heartbeat, or the check before each publish) stops publishing, turns
 * read-only and logs why; what it had not published stays in its cache.
 *
 * Errors: negative errno with the thread's message set (util/err.h).
 */
#ifndef CKPT_FS_WRITER_H
#define CKPT_FS_WRITER_H

#include "fs/bootstrap.h"
#include "fs/fs.h"

struct writer;

/* Starts them, with b's claim and publisher options (b outlives w); sets
 * fs->pub. Threads do not survive a fork: call it after daemonizing. */
int writer_start(struct fs *fs, struct bootstrap *b, struct writer **out);

/* After the unmount: publishes what is left, stops everything, and gives
 * the bucket back if all was published (the cache is then marked clean).
 * Returns the last publish's result. NULL-safe. */
int writer_stop(struct writer *w);

/* ckptctl promote: a follower (fs->follow) becomes the bucket's writer. It
 * takes the bucket over from whoever holds it with an epoch above every
 * snapshot's (bootstrap_promote), catches up with the newest snapshot,
 * starts writing, and returns once a snapshot of the new epoch is in the
 * bucket: from then on the old writer's snapshots can never be the newest.
 * -EINVAL if the mount is not following. */
int writer_promote(struct fs *fs, struct bootstrap *b, struct writer **out);

/* The mount is going: a promotion under way ends first, later ones fail
 * with -ESHUTDOWN. */
void writer_promotions_end(void);

#endif
