#include "credentials.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/err.h"

void credentials_free(struct credentials *c)
{
    free(c->access_key);
    if (c->secret_key) /* do not leave the secret in freed memory */
        memset(c->secret_key, 0, strlen(c->secret_key));
    free(c->secret_key);
    free(c->session_token);
    memset(c, 0, sizeof *c);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static int set(char **dst, const char *v)
{
    free(*dst);
    *dst = strdup(v);
    return *dst ? 0 : -ENOMEM;
}

/* Handles one "key = value" line of the wanted profile. */
static int take_line(char *line, struct credentials *out)
{
    char *eq = strchr(line, '=');
    if (!eq)
        return 0;
    *eq = '\0';
    char *k = trim(line), *v = trim(eq + 1);
    if (strcmp(k, "aws_access_key_id") == 0)
        return set(&out->access_key, v);
    if (strcmp(k, "aws_secret_access_key") == 0)
        return set(&out->secret_key, v);
    if (strcmp(k, "aws_session_token") == 0)
        return set(&out->session_token, v);
    return 0;
}

int credentials_parse(const char *text, const char *profile, struct credentials *out)
{
    char *copy = strdup(text), *save = NULL;
    int in_profile = 0, found = 0, rc = copy ? 0 : -ENOMEM;
    for (char *line = copy ? strtok_r(copy, "\n", &save) : NULL; rc == 0 && line;
         line = strtok_r(NULL, "\n", &save)) {
        char *l = trim(line);
        if (*l == '#' || *l == ';' || *l == '\0')
            continue;
        if (*l == '[') {
            char *end = strchr(l, ']');
            if (end)
                *end = '\0';
            in_profile = strcmp(trim(l + 1), profile) == 0;
            found |= in_profile;
        } else if (in_profile) {
            rc = take_line(l, out);
        }
    }
    free(copy);
    if (rc)
        return rc;
    if (!found)
        return -ENOENT;
    return out->access_key && out->secret_key ? 0 : -EINVAL;
}

static int read_text(const char *path, struct buf *out)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -errno;
    char chunk[4096];
    size_t n;
    int rc = 0;
    while (rc == 0 && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        rc = buf_append(out, chunk, n);
    if (rc == 0 && ferror(f))
        rc = -EIO;
    fclose(f);
    return rc ? rc : buf_append(out, "", 0);
}

static int from_file(const char *path, const char *profile, struct credentials *out)
{
    struct buf text = { 0 };
    int rc = read_text(path, &text);
    if (rc) {
        buf_free(&text);
        return err_set(rc == -ENOENT ? -ENOENT : -EINVAL, "cannot read credentials file %s: %s",
                       path, strerror(-rc));
    }
    rc = credentials_parse((char *)text.data, profile, out);
    memset(text.data, 0, text.len);
    buf_free(&text);
    if (rc == -ENOENT)
        return err_set(-EINVAL, "credentials file %s has no profile [%s]", path, profile);
    if (rc == -EINVAL)
        return err_set(-EINVAL,
                       "profile [%s] in %s lacks aws_access_key_id or aws_secret_access_key",
                       profile, path);
    if (rc == 0 &&
        snprintf(out->source, sizeof out->source, "profile [%s] in %s", profile, path) < 0)
        out->source[0] = '\0';
    return rc;
}

static int from_env(struct credentials *out)
{
    const char *id = getenv("AWS_ACCESS_KEY_ID"), *secret = getenv("AWS_SECRET_ACCESS_KEY");
    const char *token = getenv("AWS_SESSION_TOKEN");
    if (!id || !*id || !secret || !*secret)
        return -ENOENT;
    if (set(&out->access_key, id) || set(&out->secret_key, secret) ||
        (token && *token && set(&out->session_token, token)))
        return -ENOMEM;
    snprintf(out->source, sizeof out->source, "the environment (AWS_ACCESS_KEY_ID)");
    return 0;
}

static void default_file(char *path, size_t n)
{
    const char *env = getenv("AWS_SHARED_CREDENTIALS_FILE");
    const char *home = getenv("HOME");
    if (env && *env)
        snprintf(path, n, "%s", env);
    else
        snprintf(path, n, "%s/.aws/credentials", home ? home : "");
}

int credentials_load(const char *file, const char *profile, struct credentials *out)
{
    char path[4096];
    memset(out, 0, sizeof *out);
    int explicit = file || profile;
    if (!profile)
        profile =
            getenv("AWS_PROFILE") && *getenv("AWS_PROFILE") ? getenv("AWS_PROFILE") : "default";
    if (file)
        snprintf(path, sizeof path, "%s", file);
    else
        default_file(path, sizeof path);

    int rc = explicit ? -ENOENT : from_env(out);
    if (rc == -ENOENT)
        rc = from_file(path, profile, out);
    if (rc == -ENOENT && !explicit)
        rc = err_set(-EACCES,
                     "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                     "put profile [%s] in %s, or pass --credentials FILE",
                     profile, path);
    else if (rc == -ENOENT)
        rc = err_set(-EINVAL, "%s", err_msg(rc));
    if (rc)
        credentials_free(out);
    return rc;
}
