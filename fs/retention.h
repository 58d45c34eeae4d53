/*
 * Retention: which of a bucket's snapshots a writer deletes after each
 * publish (--keep N, --keep-age SECS). A snapshot goes when it is outside
 * the newest N (if --keep) and older than the age (if --keep-age); with
 * neither, all stay. The newest snapshot always stays. Only snapshot
 * objects are deleted: a chunk may be named by a snapshot that stays, so
 * chunks are `ckptctl gc`'s business.
 *
 * Errors: negative errno with the thread's message.
 */
#ifndef CKPT_FS_RETENTION_H
#define CKPT_FS_RETENTION_H

#include <stdint.h>

#include "cache/store.h"

struct retention {
    unsigned keep;      /* the newest this many stay; 0: no count rule */
    int64_t keep_age_s; /* snapshots younger than this stay; 0: no age rule */
};

/* Whether r deletes anything at all. */
int retention_set(const struct retention *r);

/* Whether r lets go of the i-th of n snapshots (in publishing order, the
 * newest last) whose object time is mtime, judged at now_s. */
int retention_expires(const struct retention *r, size_t i, size_t n, int64_t mtime, int64_t now_s);

/* A duration: seconds, or with s, m, h, d or w ("90s", "12h", "7d") into
 * *secs; -EINVAL naming what (the option) and the text if it is not one. */
int retention_parse_duration(const char *what, const char *text, int64_t *secs);

/* Deletes the snapshots r lets go, judged at now_s (seconds since the
 * epoch, as object times are); *deleted gets their count. */
int retention_apply(struct store *s, const struct retention *r, int64_t now_s, unsigned *deleted);

#endif
