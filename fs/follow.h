/*
 * Following (--follow): a standby mount of another writer's bucket. A thread
 * polls for a newer snapshot; when one appears it switches the mount's view
 * to it at one instant, then fetches the new snapshot's chunks into the disk
 * tier, so that a promotion (ckptctl promote) finds the newest checkpoint
 * local. Files opened before a switch keep reading the version they opened
 * (blocks_version); opens after it see the new snapshot.
 *
 * Errors: negative errno with the thread's message set (util/err.h).
 */
#ifndef CKPT_FS_FOLLOW_H
#define CKPT_FS_FOLLOW_H

#include <stdint.h>

#include "fs/fs.h"
#include "fs/snapshot.h"

struct follow;

/* Starts polling every interval_ms; fs serves the snapshot its cache
 * loaded (the meta "loaded"). */
int follow_start(struct fs *fs, unsigned interval_ms, struct follow **out);

/* Stops the thread (waiting for a switch or warm-up under way). NULL-safe;
 * f stays readable (follow_get_status) until follow_free. */
void follow_stop(struct follow *f);
void follow_free(struct follow *f);

/* After follow_stop: switches to the newest snapshot if it is newer than
 * the one served, without the warm-up (a promotion must not wait for it). */
int follow_catch_up(struct follow *f);

/* Polls again after follow_stop (a promotion that failed). */
int follow_resume(struct follow *f);

struct follow_status {
    struct snapshot_id serving; /* {0,0}: none (an empty bucket) */
    uint64_t switches;          /* snapshots switched to since the mount */
    int64_t switched_ns;        /* when the last switch happened (realtime), 0 if never */
    int warming;                /* the new snapshot's chunks are being fetched */
    uint64_t warm_done, warm_total;
    char last_error[256]; /* of the last poll, "" if it went well */
};

void follow_get_status(struct follow *f, struct follow_status *st);

#endif
