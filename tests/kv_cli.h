/*
 * kv_cli.h - runs the real `kvsim` binary from a test (fork/exec), with optional resource
 * limits, and collects its exit status, stderr and peak memory; mounts a small tmpfs for
 * the tests that fill a real file system. Header-only: each test program that includes
 * it gets its own copy of these static functions. Include it after <cmocka.h>.
 *
 * The binary is ./kvsim (tests run from the repository root), or $KVSIM_BIN (the
 * sanitizer build runs the suite against build-asan/kvsim).
 */
#ifndef KV_CLI_H
#define KV_CLI_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/kv_test.h"   /* kv_test_path, kv_test_dir_teardown */

#define KV_CLI_MAX_ARGS 64

typedef struct {
    rlim_t as_bytes;     /* RLIMIT_AS of the child, 0 = unchanged */
    rlim_t fsize_bytes;  /* RLIMIT_FSIZE of the child, 0 = unchanged */
    const char *stdin_path;  /* NULL: /dev/null */
} kv_cli_limits;

typedef struct {
    int exited;          /* 1: exited normally, status in code */
    int code;            /* exit status, or the signal number when !exited */
    char err[8192];      /* stderr (truncated), NUL-terminated */
    long maxrss_kb;      /* peak resident memory of the child */
    pid_t pid;
} kv_cli_result;

__attribute__((unused))
static const char *kv_cli_bin(void)
{
    const char *b = getenv("KVSIM_BIN");
    return b && *b ? b : "./kvsim";
}

/* Starts kvsim with args (NULL-terminated, without the program name); stderr goes to
 * err_path. Returns the child's pid, or -1. */
__attribute__((unused))
static pid_t kv_cli_start(const char *const *args, const kv_cli_limits *lim,
                          const char *err_path)
{
    const char *argv[KV_CLI_MAX_ARGS + 2];
    int n = 0;
    argv[n++] = kv_cli_bin();
    for (int i = 0; args[i] && n < KV_CLI_MAX_ARGS; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int in = open(lim && lim->stdin_path ? lim->stdin_path : "/dev/null", O_RDONLY);
    int out = open("/dev/null", O_WRONLY);
    int er = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (in < 0 || out < 0 || er < 0)
        _exit(99);
    dup2(in, 0);
    dup2(out, 1);
    dup2(er, 2);
    if (lim && lim->as_bytes) {
        struct rlimit r = { lim->as_bytes, lim->as_bytes };
        setrlimit(RLIMIT_AS, &r);
    }
    if (lim && lim->fsize_bytes) {
        struct rlimit r = { lim->fsize_bytes, lim->fsize_bytes };
        setrlimit(RLIMIT_FSIZE, &r);
    }
    execv(argv[0], (char *const *)argv);
    _exit(98);
}

/* Waits for pid and fills res (stderr read back from err_path). */
__attribute__((unused))
static void kv_cli_wait(pid_t pid, const char *err_path, kv_cli_result *res)
{
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR)
        ;
    res->pid = pid;
    res->exited = WIFEXITED(status);
    res->code = res->exited ? WEXITSTATUS(status) : WTERMSIG(status);
    res->maxrss_kb = ru.ru_maxrss;
    res->err[0] = '\0';
    FILE *f = fopen(err_path, "r");
    if (f) {
        size_t got = fread(res->err, 1, sizeof res->err - 1, f);
        res->err[got] = '\0';
        fclose(f);
    }
    unlink(err_path);
}

/* Runs kvsim with args to completion. Returns the exit status, or 128 + the signal. */
__attribute__((unused))
static int kv_cli_run(const char *const *args, const kv_cli_limits *lim, kv_cli_result *res)
{
    char err_path[64];
    snprintf(err_path, sizeof err_path, "/tmp/kvsim-cli-err-%ld-%ld", (long)getpid(),
             (long)time(NULL));
    pid_t pid = kv_cli_start(args, lim, err_path);
    if (pid < 0) {
        res->exited = 0;
        res->code = 0;
        snprintf(res->err, sizeof res->err, "fork failed");
        return -1;
    }
    kv_cli_wait(pid, err_path, res);
    return res->exited ? res->code : 128 + res->code;
}

/* Number of lines of s (a last line without '\n' counts). */
__attribute__((unused))
static int kv_cli_lines(const char *s)
{
    int n = 0;
    for (const char *p = s; *p; p++)
        n += *p == '\n' || (p[1] == '\0');
    return n;
}

/* 1 when dir or its parent holds an entry whose name contains ".tmp." (a result
 * temporary, or the staging directory .NAME.kvsim.tmp.PID a run builds beside dir). */
__attribute__((unused))
static int kv_cli_has_temporaries(const char *dir)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "{ ls -A '%s'; ls -A '%s/..'; } 2>/dev/null | grep -q "
             "'\\.tmp\\.'", dir, dir);
    return system(cmd) == 0;
}

/* Mounts a tmpfs of `size` (mount's size= option, "2m") on kv_test_path("tiny_fs"), a
 * directory this makes, so a test can fill a real file system; returns that path. Where
 * this process may not mount one (not root, or the kernel refuses) the directory is
 * removed again and the calling test skipped (cmocka skip()); one that cannot be made
 * fails it. kv_cli_tmpfs_unmount takes it down. */
__attribute__((unused))
static const char *kv_cli_tmpfs_mount(const char *size)
{
    const char *mnt = kv_test_path("tiny_fs");
    assert_int_equal(mkdir(mnt, 0700), 0);
    char options[64];
    snprintf(options, sizeof options, "size=%s", size);
    if (geteuid() != 0 || mount("tmpfs", mnt, "tmpfs", 0, options) != 0) {
        rmdir(mnt);
        print_message("skipped: cannot mount a tmpfs on %s (needs root)\n", mnt);
        skip();
    }
    return mnt;
}

/* Unmounts kv_cli_tmpfs_mount's tmpfs and removes its directory. Harmless where nothing
 * is mounted (a test that skipped, or failed before unmounting). */
__attribute__((unused))
static void kv_cli_tmpfs_unmount(void)
{
    const char *mnt = kv_test_path("tiny_fs");
    umount(mnt);
    rmdir(mnt);
}

/* A cmocka group teardown for the programs that mount the tmpfs: unmounts it (still
 * there when its test failed part-way), then kv_test_dir_teardown. */
__attribute__((unused))
static int kv_cli_tmpfs_teardown(void **state)
{
    kv_cli_tmpfs_unmount();
    return kv_test_dir_teardown(state);
}

#endif
