/*
 * Checkpoints (contract in checkpoint.h). The storage directory:
 *
 *   catalog.json            {"format": 1, "checkpoints": ["ID", ...]}, oldest first, at
 *                           most KEEP: the committed checkpoints
 *   ckpt-ID/MANIFEST.json   {"format": 1, "id": "ID", "step": N,
 *                            "views": {"VIEW": ["FILE", ...]},   its chain: base, deltas
 *                            "inputs": {"TABLE": [OFFSET, LINE]},
 *                            "outputs": {"VIEW": [LENGTH, 0]}}
 *   batches/FILE            a view's batch (drawn in ivm.c), never changed once there;
 *                           FILE is vN-ID.batch, N the view's place in the program
 *   *.mut                   a file being written
 *
 * IDs are 16 hex digits, one more than the newest in the catalog.
 *
 * Committing one (ckpt_save), step by step:
 *   1. Each view's batch, a delta, or a base when the view's chain is long
 *      (MAX_CHAIN) or its deltas add up to more than half its base, or after
 *      a failed save: written to FILE.mut, fsynced, renamed; batches/ fsynced.
 *   2. ckpt-ID/MANIFEST.json the same way; ckpt-ID/ fsynced.
 *   3. catalog.json the same way, then the directory fsynced: the commit.
 *   4. Checkpoints no longer in the catalog, and batches and stray files no
 *      committed checkpoint names, are deleted (at open too: a crash before
 *      3 leaves files no catalog names).
 */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/err.h"
#include "util/files.h"
#include "util/paths.h"

#define KEEP      2  /* committed checkpoints kept, as Feldera keeps them */
#define MAX_CHAIN 16 /* batches in a view's chain before a new base */

struct chain {
    char **files; /* under batches/ */
    size_t n, cap;
    uint64_t base_bytes, delta_bytes;
};

struct ckpt {
    char *dir;
    const char *const *names;
    size_t nviews;
    struct chain *chains;
    char ids[KEEP][CKPT_ID_LEN]; /* the catalog, oldest first */
    uint64_t steps[KEEP];        /* their steps (0: not known) */
    size_t nids;
    int read_only;
    int need_base;            /* a save failed: the chains may miss changes */
    unsigned long long tried; /* the highest ID a save used: never used again */
};

/* ---- files ---- */

/* path.mut written, fsynced, renamed to path (the directory's sync is the caller's). */
static int write_file(const char *path, const void *data, size_t len)
{
    char mut[PATH_MAX];
    if (snprintf(mut, sizeof mut, "%s.mut", path) >= (int)sizeof mut)
        return err_set(-ENAMETOOLONG, "%s: the path is too long", path);
    int fd = open(mut, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return io_error("cannot create", mut);
    int rc = write_full(fd, data, len, -1, NULL, mut);
    if (rc == 0 && fsync(fd))
        rc = io_error("cannot sync", mut);
    close(fd);
    if (rc == 0 && rename(mut, path))
        rc = io_error("cannot rename", mut);
    if (rc)
        unlink(mut);
    return rc;
}

static int read_file(const char *path, struct buf *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? err_set(-ENOENT, "%s is missing", path)
                               : io_error("cannot open", path);
    int rc = read_full(fd, out, path);
    close(fd);
    return rc;
}

static int write_json(const char *path, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_INDENT(1) | JSON_SORT_KEYS) : NULL;
    int rc = text ? write_file(path, text, strlen(text)) : -ENOMEM;
    free(text);
    json_decref(j);
    return rc;
}

static int read_json(const char *path, json_t **out)
{
    struct buf b = { 0 };
    json_error_t jerr;
    int rc = read_file(path, &b);
    if (rc == 0 && !(*out = json_loadb((const char *)b.data, b.len, 0, &jerr)))
        rc = err_set(-EBADMSG, "%s is damaged: %s", path, jerr.text);
    buf_free(&b);
    return rc;
}

/* ---- the catalog ---- */

/* DIR/NAME into out (PATH_MAX bytes); a path too long is cut, and then
 * names nothing (the open fails, naming it). */
static void join(char *out, const char *dir, const char *name)
{
    if (snprintf(out, PATH_MAX, "%s/%s", dir, name) >= PATH_MAX)
        out[0] = '\0';
}

static void path_of(const struct ckpt *c, char *out, const char *fmt, const char *a)
{
    char rel[NAME_MAX + 32];
    if (snprintf(rel, sizeof rel, fmt, a) >= (int)sizeof rel)
        rel[0] = '\0';
    join(out, c->dir, rel);
}

static int valid_id(const char *s)
{
    if (!s || strlen(s) != CKPT_ID_LEN - 1)
        return 0;
    for (const char *p = s; *p; p++)
        if (!strchr("0123456789abcdef", *p))
            return 0;
    return 1;
}

static int read_catalog(struct ckpt *c)
{
    char path[PATH_MAX];
    json_t *j = NULL, *list;
    path_of(c, path, "%s", CATALOG_NAME);
    int rc = read_json(path, &j);
    if (rc == -ENOENT)
        return 0;
    list = rc ? NULL : json_object_get(j, "checkpoints");
    if (rc == 0 && (!json_is_array(list) || json_array_size(list) > KEEP))
        rc = err_set(-EBADMSG, "%s is damaged: no list of checkpoints", path);
    for (size_t i = 0; rc == 0 && i < json_array_size(list); i++) {
        const char *id = json_string_value(json_array_get(list, i));
        if (!valid_id(id))
            rc = err_set(-EBADMSG, "%s is damaged: '%s' is not a checkpoint ID", path,
                         id ? id : "?");
        else
            snprintf(c->ids[c->nids++], CKPT_ID_LEN, "%s", id);
    }
    json_decref(j);
    return rc;
}

static int write_catalog(struct ckpt *c)
{
    char path[PATH_MAX];
    json_t *list = json_array();
    for (size_t i = 0; list && i < c->nids; i++)
        json_array_append_new(list, json_string(c->ids[i]));
    path_of(c, path, "%s", CATALOG_NAME);
    int rc = write_json(path, json_pack("{s:i, s:o}", "format", 1, "checkpoints", list));
    return rc ? rc : sync_dir(c->dir);
}

/* ---- cleaning up (step 4) ---- */

static int named_by(json_t *manifest, const char *file)
{
    json_t *views = json_object_get(manifest, "views"), *chain;
    const char *key;
    json_object_foreach(
        views, key, chain) for (size_t i = 0; i < json_array_size(chain);
                                i++) if (!strcmp(json_string_value(json_array_get(chain, i)) ?: "",
                                                 file)) return 1;
    return 0;
}

static int kept_id(const struct ckpt *c, const char *id)
{
    for (size_t i = 0; i < c->nids; i++)
        if (!strcmp(c->ids[i], id))
            return 1;
    return 0;
}

static void remove_tree(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    char p[PATH_MAX];
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            join(p, path, e->d_name);
            unlink(p);
        }
    if (d)
        closedir(d);
    rmdir(path);
}

static void clean_batches(struct ckpt *c, json_t **manifests)
{
    char path[PATH_MAX];
    path_of(c, path, "%s", "batches");
    DIR *d = opendir(path);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int keep = e->d_name[0] == '.';
        for (size_t i = 0; !keep && i < c->nids; i++)
            keep = manifests[i] && named_by(manifests[i], e->d_name);
        char p[PATH_MAX];
        join(p, path, e->d_name);
        if (!keep)
            unlink(p);
    }
    if (d)
        closedir(d);
}

/* Step 4. Manifests that cannot be read keep every batch (nothing is lost
 * to a damaged file: loading it will say so). */
static void clean(struct ckpt *c)
{
    json_t *manifests[KEEP] = { 0 };
    char path[PATH_MAX];
    int all_read = 1;
    for (size_t i = 0; i < c->nids; i++) {
        path_of(c, path, "ckpt-%s/MANIFEST.json", c->ids[i]);
        all_read &= read_json(path, &manifests[i]) == 0;
        json_int_t step = json_integer_value(json_object_get(manifests[i], "step"));
        c->steps[i] = step > 0 ? (uint64_t)step : 0;
    }
    DIR *d = opendir(c->dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        join(path, c->dir, e->d_name);
        if (!strncmp(e->d_name, "ckpt-", 5) && !kept_id(c, e->d_name + 5))
            remove_tree(path);
        else if (len > 4 && !strcmp(e->d_name + len - 4, ".mut"))
            unlink(path);
    }
    if (d)
        closedir(d);
    if (all_read)
        clean_batches(c, manifests);
    for (size_t i = 0; i < c->nids; i++)
        json_decref(manifests[i]);
}

/* ---- open, load ---- */

int ckpt_refresh(struct ckpt *c)
{
    char ids[KEEP][CKPT_ID_LEN];
    size_t n = c->nids;
    memcpy(ids, c->ids, sizeof ids);
    c->nids = 0;
    int rc = read_catalog(c);
    if (rc) {
        memcpy(c->ids, ids, sizeof ids);
        c->nids = n;
    }
    return rc;
}

/* A file made and removed: a mount that refuses writes (a follower not
 * promoted yet) may still let mkdir of an existing directory pass. */
static int probe_writable(struct ckpt *c)
{
    char path[PATH_MAX];
    path_of(c, path, "%s", "writable.mut");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return io_error("cannot create", path);
    close(fd);
    unlink(path);
    return 0;
}

int ckpt_writable(struct ckpt *c)
{
    char batches[PATH_MAX];
    path_of(c, batches, "%s", "batches");
    int rc = make_dirs(c->dir, 0755, 1);
    if (rc == 0)
        rc = make_dirs(batches, 0755, 1);
    if (rc == 0)
        rc = probe_writable(c);
    if (rc == 0 && c->read_only) /* what is cleaned must be judged by the newest catalog */
        rc = ckpt_refresh(c);
    if (rc)
        return rc;
    c->read_only = 0;
    clean(c);
    return 0;
}

uint64_t ckpt_oldest_step(const struct ckpt *c)
{
    return c->nids ? c->steps[0] : 0;
}

int ckpt_open(const char *dir, const char *const *names, size_t n, int read_only, struct ckpt **out)
{
    struct ckpt *c = calloc(1, sizeof *c);
    if (!c || !(c->dir = strdup(dir)) || !(c->chains = calloc(n ? n : 1, sizeof *c->chains))) {
        ckpt_close(c);
        return -ENOMEM;
    }
    c->names = names;
    c->nviews = n;
    int rc = read_catalog(c);
    if (rc == 0 && !read_only)
        rc = ckpt_writable(c);
    c->read_only = rc == 0 && read_only;
    if (rc) {
        ckpt_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

static void chain_clear(struct chain *ch)
{
    for (size_t i = 0; i < ch->n; i++)
        free(ch->files[i]);
    ch->n = 0;
    ch->base_bytes = ch->delta_bytes = 0;
}

static void chains_free(struct chain *chains, size_t n)
{
    for (size_t i = 0; chains && i < n; i++) {
        chain_clear(&chains[i]);
        free(chains[i].files);
    }
    free(chains);
}

void ckpt_close(struct ckpt *c)
{
    if (!c)
        return;
    chains_free(c->chains, c->nviews);
    free(c->dir);
    free(c);
}

int ckpt_latest(struct ckpt *c, char id[CKPT_ID_LEN])
{
    if (!c->nids)
        return -ENOENT;
    memcpy(id, c->ids[c->nids - 1], CKPT_ID_LEN);
    return 0;
}

static int chain_add(struct chain *ch, const char *file, uint64_t bytes, int base)
{
    char *copy = strdup(file);
    if (!copy || array_grow((void **)&ch->files, &ch->cap, ch->n, sizeof *ch->files)) {
        free(copy);
        return -ENOMEM;
    }
    ch->files[ch->n++] = copy;
    if (base)
        ch->base_bytes = bytes;
    else
        ch->delta_bytes += bytes;
    return 0;
}

static int load_view(struct ckpt *c, size_t v, json_t *chain, struct ivm *m, const char *mpath,
                     struct chain *ch)
{
    int rc = json_is_array(chain) && json_array_size(chain)
                 ? 0
                 : err_set(-EBADMSG, "%s has no state for view %s (was the program changed?)",
                           mpath, c->names[v]);
    for (size_t i = 0; rc == 0 && i < json_array_size(chain); i++) {
        const char *file = json_string_value(json_array_get(chain, i));
        char path[PATH_MAX];
        struct buf b = { 0 };
        if (!file || strchr(file, '/') || file[0] == '.')
            rc = err_set(-EBADMSG, "%s names a batch '%s' outside batches/", mpath,
                         file ? file : "?");
        if (rc == 0) {
            path_of(c, path, "batches/%s", file);
            rc = read_file(path, &b);
        }
        if (rc == 0 && (rc = ivm_load(m, b.data, b.len)) != 0)
            err_wrap(rc, "%s", path);
        if (rc == 0)
            rc = chain_add(ch, file, b.len, i == 0);
        buf_free(&b);
    }
    return rc;
}

/* name -> [offset, line] pairs of a manifest into positions. */
static int load_positions(json_t *obj, struct ckpt_pos **out, size_t *n, const char *mpath)
{
    const char *key;
    json_t *v;
    *out = calloc(json_object_size(obj) + 1, sizeof **out);
    *n = 0;
    if (!*out)
        return -ENOMEM;
    json_object_foreach(obj, key, v)
    {
        json_int_t off = json_integer_value(json_array_get(v, 0));
        json_int_t line = json_integer_value(json_array_get(v, 1));
        if (!json_is_array(v) || off < 0 || line < 0)
            return err_set(-EBADMSG, "%s: a bad position for %s", mpath, key);
        (*out)[(*n)++] = (struct ckpt_pos){ strdup(key), (uint64_t)off, (uint64_t)line };
    }
    return 0;
}

int ckpt_load(struct ckpt *c, const char *id, struct ivm **m, struct ckpt_image *img)
{
    char mpath[PATH_MAX];
    json_t *man = NULL;
    *img = (struct ckpt_image){ 0 };
    if (!valid_id(id))
        return err_set(-EINVAL, "'%s' is not a checkpoint ID (16 hex digits)", id);
    if (!kept_id(c, id))
        return err_set(-ENOENT, "%s has no checkpoint %s", c->dir, id);
    path_of(c, mpath, "ckpt-%s/MANIFEST.json", id);
    int rc = read_json(mpath, &man);
    json_int_t step = rc ? 0 : json_integer_value(json_object_get(man, "step"));
    json_t *views = json_object_get(man, "views");
    if (rc == 0 && (step < 0 || !json_is_object(views)))
        rc = err_set(-EBADMSG, "%s is damaged", mpath);
    /* the chains later saves continue change only if all of it loads */
    struct chain *chains = rc ? NULL : calloc(c->nviews + 1, sizeof *chains);
    if (rc == 0 && !chains)
        rc = -ENOMEM;
    for (size_t v = 0; rc == 0 && v < c->nviews; v++)
        rc = load_view(c, v, json_object_get(views, c->names[v]), m[v], mpath, &chains[v]);
    if (rc == 0)
        rc = load_positions(json_object_get(man, "inputs"), &img->inputs, &img->ninputs, mpath);
    if (rc == 0)
        rc = load_positions(json_object_get(man, "outputs"), &img->outputs, &img->noutputs, mpath);
    img->step = (uint64_t)step;
    json_decref(man);
    struct chain *drop = rc ? chains : c->chains;
    if (rc == 0)
        c->chains = chains;
    chains_free(drop, c->nviews);
    return rc;
}

void ckpt_image_free(struct ckpt_image *img)
{
    for (size_t i = 0; i < img->ninputs; i++)
        free((char *)img->inputs[i].name);
    for (size_t i = 0; i < img->noutputs; i++)
        free((char *)img->outputs[i].name);
    free(img->inputs);
    free(img->outputs);
    *img = (struct ckpt_image){ 0 };
}

/* ---- save ---- */

/* One above the newest committed and every one tried: a save that failed
 * after its catalog's rename may have committed on disk all the same. */
static void next_id(struct ckpt *c, char id[CKPT_ID_LEN])
{
    unsigned long long last = c->nids ? strtoull(c->ids[c->nids - 1], NULL, 16) : 0;
    c->tried = (last > c->tried ? last : c->tried) + 1;
    snprintf(id, CKPT_ID_LEN, "%016llx", c->tried);
}

/* Step 1 for view v. */
static int save_view(struct ckpt *c, size_t v, struct ivm *m, const char *id, uint64_t *written)
{
    struct chain *ch = &c->chains[v];
    int base =
        c->need_base || ch->n == 0 || ch->n >= MAX_CHAIN || ch->delta_bytes > ch->base_bytes / 2;
    struct buf b = { 0 };
    char file[NAME_MAX], path[PATH_MAX];
    snprintf(file, sizeof file, "v%zu-%s.batch", v, id);
    path_of(c, path, "batches/%s", file);
    int rc = ivm_save(m, base, &b);
    if (rc == 0)
        rc = write_file(path, b.data, b.len);
    if (rc == 0 && base)
        chain_clear(ch);
    if (rc == 0)
        rc = chain_add(ch, file, b.len, base);
    *written += b.len;
    buf_free(&b);
    return rc;
}

static json_t *positions(const struct ckpt_pos *p, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i < n; i++)
        json_object_set_new(o, p[i].name,
                            json_pack("[I, I]", (json_int_t)p[i].offset, (json_int_t)p[i].line));
    return o;
}

static json_t *manifest(const struct ckpt *c, const struct ckpt_image *img, const char *id)
{
    json_t *views = json_object();
    for (size_t v = 0; views && v < c->nviews; v++) {
        json_t *chain = json_array();
        for (size_t i = 0; chain && i < c->chains[v].n; i++)
            json_array_append_new(chain, json_string(c->chains[v].files[i]));
        json_object_set_new(views, c->names[v], chain);
    }
    return json_pack("{s:i, s:s, s:I, s:o, s:o, s:o}", "format", 1, "id", id, "step",
                     (json_int_t)img->step, "views", views, "inputs",
                     positions(img->inputs, img->ninputs), "outputs",
                     positions(img->outputs, img->noutputs));
}

int ckpt_save(struct ckpt *c, struct ivm **m, const struct ckpt_image *img, char id[CKPT_ID_LEN],
              uint64_t *written)
{
    char dir[PATH_MAX], path[PATH_MAX], batches[PATH_MAX];
    if (c->read_only)
        return err_set(-EROFS, "%s is opened read-only (a standby): no checkpoints", c->dir);
    next_id(c, id);
    path_of(c, dir, "ckpt-%s", id);
    path_of(c, batches, "%s", "batches");
    int rc = 0;
    *written = 0;
    for (size_t v = 0; rc == 0 && v < c->nviews; v++)
        rc = save_view(c, v, m[v], id, written);
    if (rc == 0)
        rc = sync_dir(batches);
    if (rc == 0)
        rc = make_dirs(dir, 0755, 1);
    if (rc == 0) /* the new directory's entry, durable before the catalog names it */
        rc = sync_dir(c->dir);
    if (rc == 0) {
        join(path, dir, "MANIFEST.json");
        rc = write_json(path, manifest(c, img, id));
    }
    if (rc == 0)
        rc = sync_dir(dir);
    char was[KEEP][CKPT_ID_LEN];
    size_t nwas = c->nids;
    memcpy(was, c->ids, sizeof was);
    if (rc == 0) { /* step 3 */
        if (c->nids == KEEP)
            memmove(c->ids[0], c->ids[1], (KEEP - 1) * sizeof c->ids[0]), c->nids--;
        memcpy(c->ids[c->nids++], id, CKPT_ID_LEN);
        if ((rc = write_catalog(c)) != 0) {
            memcpy(c->ids, was, sizeof was);
            c->nids = nwas;
        }
    }
    c->need_base = rc != 0;
    if (rc == 0)
        clean(c);
    return rc;
}
