/* The credentials chain: explicit file or profile, then the environment, then ~/.aws. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cache/credentials.h"
#include "check.h"

static const char ini[] = "# comment\n"
                          "[default]\n"
                          "aws_access_key_id = AKIDDEFAULT\n"
                          "aws_secret_access_key=secret/default\n"
                          "\n"
                          "[ other ]\n"
                          "  aws_access_key_id=test:tester  \n"
                          "; another comment\n"
                          "aws_secret_access_key = testing\n"
                          "aws_session_token = tok\n"
                          "[broken]\n"
                          "aws_access_key_id = only-id\n";

static void check_parse(void)
{
    struct credentials c = { 0 };
    CHECK_EQ(credentials_parse(ini, "default", &c), 0);
    CHECK_STR(c.access_key, "AKIDDEFAULT");
    CHECK_STR(c.secret_key, "secret/default");
    CHECK(c.session_token == NULL);
    credentials_free(&c);
    CHECK_EQ(credentials_parse(ini, "other", &c), 0);
    CHECK_STR(c.access_key, "test:tester");
    CHECK_STR(c.secret_key, "testing");
    CHECK_STR(c.session_token, "tok");
    credentials_free(&c);
    CHECK_EQ(credentials_parse(ini, "missing", &c), -ENOENT);
    credentials_free(&c);
    CHECK_EQ(credentials_parse(ini, "broken", &c), -EINVAL);
    credentials_free(&c);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void check_chain(const char *dir)
{
    char file[512];
    struct credentials c;
    snprintf(file, sizeof file, "%s/credentials", dir);
    write_file(file, ini);
    unsetenv("AWS_PROFILE");
    setenv("HOME", dir, 1); /* no ~/.aws there */
    unsetenv("AWS_SHARED_CREDENTIALS_FILE");

    /* Environment first when nothing is asked for explicitly. */
    setenv("AWS_ACCESS_KEY_ID", "ENVID", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET", 1);
    CHECK_EQ(credentials_load(NULL, NULL, &c), 0);
    CHECK_STR(c.access_key, "ENVID");
    credentials_free(&c);

    /* An explicit file or profile wins over the environment. */
    CHECK_EQ(credentials_load(file, "other", &c), 0);
    CHECK_STR(c.access_key, "test:tester");
    credentials_free(&c);
    CHECK_EQ(credentials_load(file, NULL, &c), 0);
    CHECK_STR(c.access_key, "AKIDDEFAULT");
    credentials_free(&c);

    /* Then the shared file, with AWS_PROFILE. */
    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
    setenv("AWS_SHARED_CREDENTIALS_FILE", file, 1);
    setenv("AWS_PROFILE", "other", 1);
    CHECK_EQ(credentials_load(NULL, NULL, &c), 0);
    CHECK_STR(c.secret_key, "testing");
    credentials_free(&c);

    /* Nothing anywhere: -EACCES naming where it looked; a bad explicit profile: -EINVAL. */
    unsetenv("AWS_SHARED_CREDENTIALS_FILE");
    unsetenv("AWS_PROFILE");
    CHECK_EQ(credentials_load(NULL, NULL, &c), -EACCES);
    CHECK_EQ(credentials_load(file, "nope", &c), -EINVAL);
    CHECK_EQ(credentials_load(file, "broken", &c), -EINVAL);
    unlink(file);
}

int main(void)
{
    char dir[] = "/tmp/ckpt-creds-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    check_parse();
    check_chain(dir);
    rmdir(dir);
    return check_done("test_credentials");
}
