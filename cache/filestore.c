/*
 * The file backend: a directory plays the bucket, a key is a path below it.
 * Used as the embedded default (no server needed) and for shared disks, so
 * it keeps S3's semantics where the cache relies on them:
 *
 *  1. A put is atomic and durable: bytes go to a temporary file in the
 *     target's directory, are fsynced, and are renamed over the key; the
 *     directory is fsynced. Readers see the old object or the whole new one.
 *  2. A conditional put links the temporary file to the key: link() fails
 *     with EEXIST if the key exists, atomically, as If-None-Match: * does.
 *  3. Listing yields keys in byte order, as S3 does: a depth-first walk whose
 *     directory entries are sorted as if each directory name ended in '/'
 *     (every key below "a" starts with "a/", and '-' < '/' < '0').
 *  4. Deleting a missing key succeeds; directories left empty by a delete are
 *     removed, and a put racing that removal recreates its directory.
 *
 * Temporary files are named ".ckptfs-tmp.*"; keys may not use that name, and
 * listings skip them. S3 lets "a" and "a/b" both be keys; a directory cannot
 * be both, so such a put fails with -EINVAL (ckptfs's layout never does it).
 */
#include "store_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/err.h"

#define TMP_PREFIX ".ckptfs-tmp."

struct filestore {
    char root[PATH_MAX]; /* no trailing '/' except for the root directory itself */
};

static int sys_err(int e, const char *what, const char *path)
{
    int rc = -e;
    if (e == ENOENT)
        return err_set(-ENOENT, "%s: no such object", path);
    if (e == ENOSPC || e == EDQUOT)
        return err_set(rc, "%s %s: the disk is full", what, path);
    if (e != EACCES && e != EPERM && e != EINVAL && e != ENOTDIR && e != EISDIR && e != ENOMEM)
        rc = -EIO;
    if (e == ENOTDIR || e == EISDIR)
        rc = -EINVAL;
    return err_set(rc, "%s %s: %s", what, path, strerror(e));
}

/* root + "/" + rel into out; -EINVAL if that is longer than a path may be. */
static int join(char *out, const char *root, const char *rel)
{
    const char *sep = strcmp(root, "/") ? "/" : "";
    int n = snprintf(out, PATH_MAX, "%s%s%s", root, sep, rel);
    if (n < 0 || n >= PATH_MAX)
        return err_set(-EINVAL, "path %s/%s is too long", root, rel);
    return 0;
}

static int key_path(const struct filestore *fs, const char *key, char *path)
{
    for (const char *seg = key; seg; seg = strchr(seg, '/') ? strchr(seg, '/') + 1 : NULL)
        if (strncmp(seg, TMP_PREFIX, strlen(TMP_PREFIX)) == 0)
            return err_set(-EINVAL,
                           "bad object key '%s': names starting with " TMP_PREFIX " are reserved",
                           key);
    return join(path, fs->root, key);
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return sys_err(errno, "open directory", dir);
    int rc = fsync(fd) ? sys_err(errno, "fsync", dir) : 0;
    close(fd);
    return rc;
}

/* mkdir -p of the directories between the root and path's last component. */
static int make_parents(const struct filestore *fs, const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    size_t start = strlen(fs->root);
    for (char *p = dir + start + 1; (p = strchr(p, '/')) != NULL; p++) {
        *p = '\0';
        if (mkdir(dir, 0755) && errno != EEXIST)
            return sys_err(errno, "mkdir", dir);
        *p = '/';
    }
    return 0;
}

static void dir_of(const char *path, char *dir)
{
    snprintf(dir, PATH_MAX, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
}

/* Creates a fresh temporary file beside path, creating missing directories.
 * Retries once per lost race with a delete that removed an emptied directory. */
static int open_temp(const struct filestore *fs, const char *path, char *tmp)
{
    char dir[PATH_MAX];
    dir_of(path, dir);
    for (int tries = 0; tries < 8; tries++) {
        uint64_t r;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (uint64_t)getpid() * 2654435761u + (uint64_t)tries;
        int len = snprintf(tmp, PATH_MAX, "%s/" TMP_PREFIX "%016llx", dir, (unsigned long long)r);
        if (len < 0 || len >= PATH_MAX)
            return err_set(-EINVAL, "path %s is too long", path);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0)
            return fd;
        if (errno != ENOENT && errno != EEXIST)
            return sys_err(errno, "create", tmp);
        int rc = make_parents(fs, path);
        if (rc && rc != -ENOENT) /* ENOENT: a delete pruned a parent meanwhile; go again */
            return rc;
    }
    return err_set(-EIO, "could not create a temporary file in %s", dir);
}

static int write_all(int fd, const void *data, size_t len, const char *path)
{
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return sys_err(errno, "write", path);
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Rules 1 and 2: publish a fully written, fsynced temporary file under path. */
static int publish(const char *tmp, const char *path, unsigned flags)
{
    int rc = 0;
    if (flags & STORE_IF_ABSENT) {
        if (link(tmp, path))
            rc = errno == EEXIST ? err_set(-EEXIST, "%s already exists", path)
                                 : sys_err(errno, "link", path);
        unlink(tmp);
    } else if (rename(tmp, path)) {
        rc = sys_err(errno, "rename onto", path);
        unlink(tmp);
    }
    if (rc)
        return rc;
    char dir[PATH_MAX];
    dir_of(path, dir);
    return fsync_dir(dir);
}

static int f_put(void *impl, const char *key, const void *data, size_t len, unsigned flags)
{
    struct filestore *fs = impl;
    char path[PATH_MAX], tmp[PATH_MAX];
    int rc = key_path(fs, key, path);
    if (rc)
        return rc;
    int fd = open_temp(fs, path, tmp);
    if (fd < 0)
        return fd;
    rc = write_all(fd, data, len, tmp);
    if (!rc && fsync(fd))
        rc = sys_err(errno, "fsync", tmp);
    close(fd);
    if (rc) {
        unlink(tmp);
        return rc;
    }
    return publish(tmp, path, flags);
}

/* key's object, or (from[0] == '/', store_copy_from) another store's by its path. */
static int open_object(const struct filestore *fs, const char *key, char *path, struct stat *st)
{
    int rc = key[0] == '/' ? (snprintf(path, PATH_MAX, "%s", key) >= PATH_MAX ? -ENAMETOOLONG : 0)
                           : key_path(fs, key, path);
    if (rc)
        return rc;
    /* O_NOFOLLOW: a symlink is not an object; O_NONBLOCK: nor is a FIFO to hang on. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return errno == ENOTDIR || errno == ELOOP ? err_set(-ENOENT, "%s: no such object", path)
                                                  : sys_err(errno, "open", path);
    if (fstat(fd, st) || !S_ISREG(st->st_mode)) {
        close(fd);
        return err_set(-ENOENT, "%s: no such object", path);
    }
    return fd;
}

static int read_range(int fd, uint64_t off, uint64_t len, struct buf *out, const char *path)
{
    int rc = buf_reserve(out, len);
    while (!rc && len) {
        ssize_t n = pread(fd, out->data + out->len, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = sys_err(errno, "read", path);
        else if (n == 0)
            rc = err_set(-EIO, "%s shrank while being read", path);
        else {
            out->len += (size_t)n;
            off += (uint64_t)n;
            len -= (uint64_t)n;
        }
    }
    if (out->data)
        out->data[out->len] = 0;
    return rc;
}

static int f_get(void *impl, const char *key, uint64_t off, uint64_t len, struct buf *out)
{
    char path[PATH_MAX];
    struct stat st;
    int fd = open_object(impl, key, path, &st);
    if (fd < 0)
        return fd;
    uint64_t size = (uint64_t)st.st_size;
    int rc = 0;
    if (off >= size && (size > 0 || off > 0)) /* as S3: only offset 0 of nothing is fine */
        rc = err_set(-ERANGE, "range starts at %llu, past the end of %s (%llu bytes)",
                     (unsigned long long)off, path, (unsigned long long)size);
    else if (off < size)
        rc = read_range(fd, off, len > size - off ? size - off : len, out, path);
    close(fd);
    return rc;
}

static int f_head(void *impl, const char *key, struct store_object *obj)
{
    char path[PATH_MAX];
    struct stat st;
    int fd = open_object(impl, key, path, &st);
    if (fd < 0)
        return fd;
    close(fd);
    obj->key = key;
    obj->size = (uint64_t)st.st_size;
    obj->mtime = st.st_mtim.tv_sec;
    return 0;
}

/* Rule 4: prune directories a delete left empty, up to (not including) the root. */
static void prune_dirs(const struct filestore *fs, char *path)
{
    size_t root = strlen(fs->root);
    char *slash;
    while ((slash = strrchr(path, '/')) != NULL && (size_t)(slash - path) > root) {
        *slash = '\0';
        if (rmdir(path))
            break;
    }
}

static int f_del(void *impl, const char *key)
{
    struct filestore *fs = impl;
    char path[PATH_MAX];
    int rc = key_path(fs, key, path);
    if (rc)
        return rc;
    if (unlink(path)) {
        if (errno == ENOENT || errno == ENOTDIR)
            return 0;
        return sys_err(errno, "unlink", path);
    }
    prune_dirs(fs, path);
    return 0;
}

static int f_del_many(void *impl, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = f_del(impl, keys[i]);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- listing (rule 3) ---- */

struct walk {
    struct store_page *page;
    unsigned delivered;
    char last[PATH_MAX];
    int user_rc; /* the callback's non-zero return: the caller stopped the listing */
    int full;    /* the page holds max_keys objects */
};

struct entry {
    char name[NAME_MAX + 2]; /* with '/' appended for directories */
};

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct entry *)a)->name, ((const struct entry *)b)->name);
}

static int read_sorted(const char *dir, struct entry **out, size_t *n)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT || errno == ENOTDIR ? 0 : sys_err(errno, "list", dir);
    struct entry *v = NULL;
    size_t cap = 0;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' && (!de->d_name[1] || !strcmp(de->d_name, "..") ||
                                     !strncmp(de->d_name, TMP_PREFIX, strlen(TMP_PREFIX))))
            continue;
        if (*n == cap) {
            struct entry *nv = realloc(v, (cap = cap ? cap * 2 : 64) * sizeof *v);
            if (!nv) {
                rc = -ENOMEM;
                break;
            }
            v = nv;
        }
        int is_dir = de->d_type == DT_DIR;
        if (de->d_type == DT_UNKNOWN) {
            struct stat st;
            is_dir = fstatat(dirfd(d), de->d_name, &st, 0) == 0 && S_ISDIR(st.st_mode);
        }
        snprintf(v[*n].name, sizeof v[*n].name, "%s%s", de->d_name, is_dir ? "/" : "");
        (*n)++;
    }
    closedir(d);
    if (v)
        qsort(v, *n, sizeof *v, entry_cmp);
    *out = v;
    return rc;
}

/* Could the subtree whose keys all start with rel hold a key we still need? */
static int subtree_wanted(const struct walk *w, const char *rel)
{
    const char *prefix = w->page->prefix ? w->page->prefix : "";
    size_t rl = strlen(rel), pl = strlen(prefix);
    if (strncmp(rel, prefix, rl < pl ? rl : pl) != 0)
        return 0;
    const char *marker = w->page->marker;
    return !marker || strcmp(rel, marker) > 0 || strncmp(marker, rel, rl) == 0;
}

static int deliver(struct walk *w, const char *fullpath, const char *key)
{
    const char *prefix = w->page->prefix ? w->page->prefix : "";
    if (strncmp(key, prefix, strlen(prefix)) != 0)
        return 0;
    if (w->page->marker && strcmp(key, w->page->marker) <= 0)
        return 0;
    struct stat st;
    if (stat(fullpath, &st))
        return 0; /* deleted since readdir: S3 would not list it either */
    struct store_object obj = { .key = key,
                                .size = (uint64_t)st.st_size,
                                .mtime = st.st_mtim.tv_sec };
    w->user_rc = w->page->fn(w->page->arg, &obj);
    snprintf(w->last, sizeof w->last, "%s", key);
    w->full = ++w->delivered == w->page->max_keys;
    return 0;
}

/* Recursion is as deep as the tree, so the path buffers live on the heap. */
static int walk_dir(struct walk *w, const char *root, const char *rel)
{
    char *dir = malloc(PATH_MAX), *child = malloc(PATH_MAX);
    struct entry *v = NULL;
    size_t n = 0;
    int rc = dir && child ? join(dir, root, rel) : -ENOMEM;
    if (rc == 0)
        rc = read_sorted(dir, &v, &n);
    for (size_t i = 0; rc == 0 && !w->user_rc && !w->full && i < n; i++) {
        int len = snprintf(child, PATH_MAX, "%s%s", rel, v[i].name);
        if (len < 0 || len >= PATH_MAX)
            continue;
        if (child[len - 1] == '/') {
            if (subtree_wanted(w, child))
                rc = walk_dir(w, root, child);
        } else if ((rc = join(dir, root, child)) == 0) {
            rc = deliver(w, dir, child);
        }
    }
    free(v);
    free(dir);
    free(child);
    return rc;
}

static int f_list_page(void *impl, struct store_page *page)
{
    struct filestore *fs = impl;
    struct walk w = { .page = page };
    /* Start at the deepest directory the prefix names; nothing outside it can match. */
    char rel[PATH_MAX] = "";
    const char *prefix = page->prefix ? page->prefix : "";
    const char *slash = strrchr(prefix, '/');
    if (slash)
        snprintf(rel, sizeof rel, "%.*s", (int)(slash - prefix + 1), prefix);
    int rc = walk_dir(&w, fs->root, rel);
    if (rc || w.user_rc)
        return rc ? rc : w.user_rc;
    if (w.full && !(page->next = strdup(w.last)))
        return -ENOMEM;
    return 0;
}

/* copy_file_range where the kernel can (a reflink on some file systems),
 * plain reads and writes where it cannot. */
static int copy_bytes(int in, int out, off_t size, const char *src, const char *dst)
{
    int plain = 0;
    char *bounce = NULL;
    int rc = 0;
    for (off_t done = 0; !rc && done < size;) {
        size_t want = (size_t)(size - done);
        ssize_t n = -1;
        if (!plain) {
            n = copy_file_range(in, NULL, out, NULL, want, 0);
            plain = n < 0 &&
                    (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP);
            if (plain)
                continue;
        } else if (bounce || (bounce = malloc(1 << 20))) {
            n = pread(in, bounce, want < (1 << 20) ? want : (1 << 20), done);
            if (n > 0)
                rc = write_all(out, bounce, (size_t)n, dst);
        } else {
            rc = -ENOMEM;
        }
        if (!rc && n <= 0)
            rc = n == 0 ? err_set(-EIO, "%s shrank while being copied", src)
                        : sys_err(errno, "copy to", dst);
        done += n > 0 ? n : 0;
    }
    free(bounce);
    return rc;
}

static int f_copy(void *impl, const char *from, const char *to)
{
    struct filestore *fs = impl;
    char src[PATH_MAX], dst[PATH_MAX], tmp[PATH_MAX];
    struct stat st;
    int in = open_object(fs, from, src, &st);
    if (in < 0)
        return in;
    int rc = key_path(fs, to, dst);
    int out = rc ? rc : open_temp(fs, dst, tmp);
    if (out < 0) {
        close(in);
        return out;
    }
    rc = copy_bytes(in, out, st.st_size, src, tmp);
    if (!rc && fsync(out))
        rc = sys_err(errno, "fsync", tmp);
    close(in);
    close(out);
    if (rc) {
        unlink(tmp);
        return rc;
    }
    return publish(tmp, dst, 0);
}

/* The object's path. */
static int f_copy_source(void *impl, const char *key, struct buf *out)
{
    char path[PATH_MAX];
    int rc = key_path(impl, key, path);
    return rc ? rc : buf_printf(out, "%s", path);
}

static void f_close(void *impl)
{
    free(impl);
}

static const struct store_ops file_ops = {
    .put = f_put,
    .get = f_get,
    .head = f_head,
    .del = f_del,
    .del_many = f_del_many,
    .list_page = f_list_page,
    .copy = f_copy,
    .copy_source = f_copy_source,
    .close = f_close,
};

int file_store_open(const char *url, const struct store_options *opt, struct store **out)
{
    const char *path = url + strlen("file://");
    if (path[0] != '/')
        return err_set(-EINVAL, "'%s': a file URL needs an absolute path (file:///DIR)", url);
    struct filestore *fs = calloc(1, sizeof *fs);
    if (!fs)
        return -ENOMEM;
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    if (n >= sizeof fs->root) {
        free(fs);
        return err_set(-EINVAL, "'%s': path too long", url);
    }
    memcpy(fs->root, path, n);
    struct stat st;
    if (stat(fs->root, &st) || !S_ISDIR(st.st_mode)) {
        int rc = err_set(-ENXIO, "'%s': directory %s does not exist", url, fs->root);
        free(fs);
        return rc;
    }
    *out = store_new(&file_ops, fs, url, opt);
    return *out ? 0 : -ENOMEM;
}
