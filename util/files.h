/*
 * Whole reads and writes of files, and directory syncs, for the code that
 * keeps its own files durable (ckptpipe's checkpoints, journal and outputs).
 *
 * Errors: -errno of the failing call, with the message "cannot VERB PATH:
 * reason" (io_error; -ENOMEM without one).
 */
#ifndef CKPT_UTIL_FILES_H
#define CKPT_UTIL_FILES_H

#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/* All n bytes of p written at offset at, or at the file's position (its end
 * with O_APPEND) when at < 0, going on after short writes and EINTR. *done
 * (if not NULL) gets how many were written, also on an error. */
int write_full(int fd, const void *p, size_t n, int64_t at, size_t *done, const char *path);

/* The file's bytes from offset 0 to its end, appended to out. */
int read_full(int fd, struct buf *out, const char *path);

/* The error of a call that just failed on path: -errno, and the message
 * "WHAT PATH: reason" (what: "cannot create" ...). */
int io_error(const char *what, const char *path);

/* The directory's entries made durable (after a create, rename or unlink). */
int sync_dir(const char *path);

#endif
