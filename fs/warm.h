/*
 * Warm-up (`ckptctl warm`): every regular file under a directory, or one
 * file, fetched into the disk tier in the background, in parallel, with
 * progress the caller can poll.
 */
#ifndef CKPT_FS_WARM_H
#define CKPT_FS_WARM_H

#include <stdint.h>

#include "fs/fs.h"

struct warm;

struct warm_progress {
    uint64_t done, total;       /* bytes fetched, and to fetch */
    uint64_t files_done, files; /* files whose fetches are queued, and all */
};

/* Lists the files under ino and starts fetching what of them is only in the
 * bucket. Fails with -ENOSPC, naming the sizes, if that cannot fit in the
 * cache beside its dirty data; with -ENOENT if ino is not there. */
int warm_start(struct fs *fs, uint64_t ino, struct warm **out);

/* Where it is; returns 1 while fetches are under way, 0 once all ended. */
int warm_poll(struct warm *w, struct warm_progress *p);

/* Queues no more fetches: warm_finish then waits only for those queued
 * (a few blocks' worth, the fetch pool's queue), not for the whole tree. */
void warm_cancel(struct warm *w);

/* Waits for the end, fills p, frees w. Returns 0 or the first error. */
int warm_finish(struct warm *w, struct warm_progress *p);

#endif
