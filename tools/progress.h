/*
 * What ckptctl's long commands show on a terminal while they work.
 */
#ifndef CKPT_TOOLS_PROGRESS_H
#define CKPT_TOOLS_PROGRESS_H

#include <stddef.h>

/* bytes as people read them: "812 B", "1.5 GiB". */
void ctl_size_text(double bytes, char *out, size_t n);

/* Redraws "[####....]  42%  1.5 GiB of 3.0 GiB, 12 of 40 WHAT" on standard
 * error, over the previous line. */
void ctl_progress(double done, double total, long long items_done, long long items,
                  const char *what);

#endif
