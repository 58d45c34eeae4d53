/*
 * Where the s3 backend's keys come from, in the order the AWS tools use:
 *
 *  1. an explicit credentials file or profile (--credentials, --profile):
 *     the caller asked for them, so they win;
 *  2. AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN);
 *  3. profile $AWS_PROFILE (else "default") in $AWS_SHARED_CREDENTIALS_FILE
 *     (else ~/.aws/credentials).
 */
#ifndef CKPT_CACHE_CREDENTIALS_H
#define CKPT_CACHE_CREDENTIALS_H

struct credentials {
    char *access_key;
    char *secret_key;
    char *session_token; /* NULL when there is none */
    char source[300];    /* where they came from, for messages */
};

/* Loads credentials following the chain above. file and profile may be NULL.
 * Returns 0, -EACCES when no source has them (the message lists where it
 * looked), -EINVAL when a file is unreadable or its profile lacks a key, -ENOMEM. */
int credentials_load(const char *file, const char *profile, struct credentials *out);

/* Reads profile's keys from INI text as ~/.aws/credentials holds it
 * ("[name]" sections, "key = value" lines, '#' and ';' comments).
 * Returns 0, -ENOENT when the profile is absent, -EINVAL when it lacks a key. */
int credentials_parse(const char *text, const char *profile, struct credentials *out);

void credentials_free(struct credentials *c);

#endif
