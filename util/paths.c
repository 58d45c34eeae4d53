#include "paths.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "util/err.h"

static int make_one(const char *dir, mode_t mode)
{
    if (mkdir(dir, mode) && errno != EEXIST)
        return err_set(-errno, "cannot create %s: %s", dir, strerror(errno));
    return 0;
}

int make_dirs(const char *path, mode_t mode, int whole)
{
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
        return err_set(-ENAMETOOLONG, "%s: the path is too long", path);
    int rc = 0;
    for (char *p = dir + 1; rc == 0 && (p = strchr(p, '/')) != NULL; p++) {
        *p = '\0';
        rc = make_one(dir, mode);
        *p = '/';
    }
    return rc || !whole ? rc : make_one(dir, mode);
}
