/*
 * Directories on a path, as mkdir -p makes them.
 */
#ifndef CKPT_UTIL_PATHS_H
#define CKPT_UTIL_PATHS_H

#include <sys/types.h>

/* Makes every missing directory of path with mode: its last component too
 * if whole, else only the directories above it (path names a file). Returns
 * 0, or -errno with the message "cannot create DIR: reason". */
int make_dirs(const char *path, mode_t mode, int whole);

#endif
