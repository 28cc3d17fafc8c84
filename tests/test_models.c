/*
 * test_models.c - `make models` (traces/get_models.sh): files are sha256-checked.
 *
 * A stand-in for ../shared/models holds a tokenizer.bin with one byte changed: the script
 * fails with a message naming the file, the damaged copy's sha256 (computed here by
 * sha256sum, a second route) and the expected one, and leaves no tokenizer.bin and no
 * temporary behind in the destination. A damaged file already in the destination is
 * replaced by a good copy. The npm fallback is pointed at a missing tarball, so the test
 * never downloads.
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/kv_test.h"

#define TOKENIZER_SHA256 "50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361"

static int setup(void **state)
{
    (void)state;
    return kv_test_dir_make("kvsim_test_models");
}

static void copy_file(const char *from, const char *to, long flip_at)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    int c;
    for (long i = 0; (c = fgetc(in)) != EOF; i++)
        fputc(i == flip_at ? c ^ 0x01 : c, out);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

/* sha256sum's digest of path. */
static void sha256sum(const char *path, char out[65])
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(out, 65, p));
    pclose(p);
    out[64] = '\0';
}

/* Runs the script with the stand-in shared directory; its output into *log (static). */
static int run_script(const char *shared, const char *dest, char **log)
{
    static char buf[8192];
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "KVSIM_SHARED_MODELS='%s' KVSIM_MODELS='%s' KVSIM_NPM_TARBALL=/nonexistent.tgz "
             "sh traces/get_models.sh 2>&1",
             shared, dest);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(buf, 1, sizeof buf - 1, p);
    buf[n] = '\0';
    int st = pclose(p);
    print_message("%s", buf);
    *log = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The stand-in: good stories260K.bin and stories15M.bin, tokenizer.bin changed at flip_at
 * (-1: unchanged). */
static const char *make_shared(long flip_at)
{
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s", kv_test_path("shared"));
    mkdir(dir, 0755);
    const char *names[] = {"stories260K.bin", "stories15M.bin", "tokenizer.bin"};
    for (int i = 0; i < 3; i++) {
        char src[1024], dst[1200];
        snprintf(src, sizeof src, "%s", kv_test_models_file(names[i]));
        snprintf(dst, sizeof dst, "%s/%s", dir, names[i]);
        unlink(dst);
        if (i == 2)
            copy_file(src, dst, flip_at);
        else {
            char abs[PATH_MAX];
            assert_non_null(realpath(src, abs));
            assert_int_equal(symlink(abs, dst), 0);
        }
    }
    return dir;
}

/* Entries of dir other than . and .. whose name starts with prefix. */
static int count_entries(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
            strncmp(e->d_name, prefix, strlen(prefix)) == 0)
            n++;
    closedir(d);
    return n;
}

static void test_damaged_copy_refused(void **state)
{
    (void)state;
    char shared[1024], dest[1024], bad[1200], bad_sha[65], *log = NULL;
    snprintf(shared, sizeof shared, "%s", make_shared(1000));
    snprintf(dest, sizeof dest, "%s", kv_test_path("dest"));
    snprintf(bad, sizeof bad, "%s/tokenizer.bin", shared);
    sha256sum(bad, bad_sha);
    assert_string_not_equal(bad_sha, TOKENIZER_SHA256);
    assert_int_not_equal(run_script(shared, dest, &log), 0);
    assert_non_null(strstr(log, "tokenizer.bin"));
    assert_non_null(strstr(log, bad_sha));
    assert_non_null(strstr(log, TOKENIZER_SHA256));
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.bin", dest);
    assert_int_not_equal(access(path, F_OK), 0); /* not installed */
    assert_int_equal(count_entries(dest, "."), 0); /* no temporary left */
}

static void test_damaged_installed_file_replaced(void **state)
{
    (void)state;
    char shared[1024], dest[1024], path[1200], sha[65], *log = NULL;
    snprintf(shared, sizeof shared, "%s", make_shared(-1));
    snprintf(dest, sizeof dest, "%s", kv_test_path("dest2"));
    mkdir(dest, 0755);
    snprintf(path, sizeof path, "%s/tokenizer.bin", dest);
    copy_file(kv_test_models_file("tokenizer.bin"), path, 5);
    assert_int_equal(run_script(shared, dest, &log), 0);
    assert_non_null(strstr(log, "replacing"));
    sha256sum(path, sha);
    assert_string_equal(sha, TOKENIZER_SHA256);
    assert_int_equal(count_entries(dest, "."), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_damaged_copy_refused),
        cmocka_unit_test(test_damaged_installed_file_replaced),
    };
    return cmocka_run_group_tests(tests, setup, kv_test_dir_teardown);
}
