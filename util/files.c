/* Whole reads and writes (contract in files.h). */
#include "files.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "util/err.h"

int io_error(const char *what, const char *path)
{
    return err_set(-errno, "%s %s: %s", what, path, strerror(errno));
}

int write_full(int fd, const void *p, size_t n, int64_t at, size_t *done, const char *path)
{
    size_t put = 0;
    int rc = 0;
    while (rc == 0 && put < n) {
        const char *from = (const char *)p + put;
        ssize_t w = at < 0 ? write(fd, from, n - put) : pwrite(fd, from, n - put, at + (off_t)put);
        if (w == 0)
            errno = EIO; /* no progress: never loop on it */
        if (w == 0 || (w < 0 && errno != EINTR))
            rc = io_error("cannot write", path);
        put += w > 0 ? (size_t)w : 0;
    }
    if (done)
        *done = put;
    return rc;
}

int read_full(int fd, struct buf *out, const char *path)
{
    for (off_t at = 0;;) {
        if (buf_reserve(out, 1 << 20))
            return -ENOMEM;
        ssize_t n = pread(fd, out->data + out->len, out->cap - out->len, at);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return io_error("cannot read", path);
        if (n == 0)
            return 0;
        out->len += (size_t)n;
        at += n;
    }
}

int sync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = fd < 0 || fsync(fd) ? io_error("cannot sync", path) : 0;
    if (fd >= 0)
        close(fd);
    return rc;
}
