/*
 * signals.c - interrupt and fault handling (see signals.h).
 *
 * The handlers only call async-signal-safe functions (unlink, write, _exit, sigaction):
 * the temporaries live in a fixed table filled before each file is created, and each slot
 * is published by a flag written after its path.
 */
#define _GNU_SOURCE   /* syscall, SYS_getdents64 */
#include "sim/signals.h"
#include "traces/validate.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KV_TMP_PATH_LEN 4096

static char tmp_paths[KV_TMP_MAX][KV_TMP_PATH_LEN];
static volatile sig_atomic_t tmp_used[KV_TMP_MAX];

/* The handlers that were in place before ours, for faults that are not the reader's. */
static struct sigaction prev_segv, prev_bus, prev_fpe;

int kv_tmp_register(const char *path)
{
    if (strlen(path) >= KV_TMP_PATH_LEN)
        return -1;
    for (int i = 0; i < KV_TMP_MAX; i++)
        if (!tmp_used[i]) {
            memcpy(tmp_paths[i], path, strlen(path) + 1);
            tmp_used[i] = 1;
            return 0;
        }
    return -1;
}

void kv_tmp_unregister(const char *path)
{
    for (int i = 0; i < KV_TMP_MAX; i++)
        if (tmp_used[i] && strcmp(tmp_paths[i], path) == 0)
            tmp_used[i] = 0;
}

static char tmp_dirs[KV_TMP_MAX][KV_TMP_PATH_LEN];
static volatile sig_atomic_t tmp_dir_used[KV_TMP_MAX];

int kv_tmp_register_dir(const char *path)
{
    if (strlen(path) >= KV_TMP_PATH_LEN)
        return -1;
    for (int i = 0; i < KV_TMP_MAX; i++)
        if (!tmp_dir_used[i]) {
            memcpy(tmp_dirs[i], path, strlen(path) + 1);
            tmp_dir_used[i] = 1;
            return 0;
        }
    return -1;
}

void kv_tmp_unregister_dir(const char *path)
{
    for (int i = 0; i < KV_TMP_MAX; i++)
        if (tmp_dir_used[i] && strcmp(tmp_dirs[i], path) == 0)
            tmp_dir_used[i] = 0;
}

/* The records getdents64(2) fills in. */
struct dirent64_record {
    uint64_t ino;
    int64_t off;
    unsigned short reclen;
    unsigned char type;
    char name[];
};

/* Removes everything inside open directory fd, descending depth more levels. Passes over
 * the directory until one removes nothing: removing entries while reading may skip some. */
static int remove_entries(int fd, int depth)
{
    char buf[2048];
    int rc = 0, removed = 1;
    while (removed) {
        removed = 0;
        if (lseek(fd, 0, SEEK_SET) != 0)
            return -1;
        long n;
        while ((n = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0)
            for (long at = 0; at < n;) {
                const struct dirent64_record *d = (const void *)(buf + at);
                at += d->reclen;
                if (strcmp(d->name, ".") == 0 || strcmp(d->name, "..") == 0)
                    continue;
                if (unlinkat(fd, d->name, 0) == 0) {
                    removed = 1;
                    continue;
                }
                int sub = depth > 0 ? openat(fd, d->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                                    : -1;
                if (sub < 0) {
                    rc = -1;
                    continue;
                }
                if (remove_entries(sub, depth - 1) != 0)
                    rc = -1;
                close(sub);
                if (unlinkat(fd, d->name, AT_REMOVEDIR) == 0)
                    removed = 1;
                else
                    rc = -1;
            }
        if (n < 0)
            return -1;
        if (rc)
            return rc;   /* something stays: another pass would not remove it */
    }
    return 0;
}

int kv_remove_tree(const char *path)
{
    if (unlink(path) == 0 || errno == ENOENT)
        return 0;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    int rc = remove_entries(fd, KV_TREE_DEPTH - 1);
    close(fd);
    if (rmdir(path) != 0)
        rc = -1;
    return rc;
}

static void remove_temporaries(void)
{
    for (int i = 0; i < KV_TMP_MAX; i++)
        if (tmp_used[i])
            unlink(tmp_paths[i]);
    for (int i = 0; i < KV_TMP_MAX; i++)
        if (tmp_dir_used[i])
            kv_remove_tree(tmp_dirs[i]);
}

/* write(2) of a NUL-terminated string; the result is ignored (nothing to do about it). */
static void say(const char *s)
{
    ssize_t rc = write(STDERR_FILENO, s, strlen(s));
    (void)rc;
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGHUP: return "SIGHUP";
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    default: return "SIGFPE";
    }
}

/* kv_signals_hold: while holding, an interrupt is only recorded (any thread may receive
 * it, so blocking it in the publishing thread would not be enough). */
static volatile sig_atomic_t holding, pending, published;

void kv_signals_published(void)
{
    published = 1;
}

static void on_interrupt(int sig)
{
    if (holding) {
        pending = sig;
        return;
    }
    remove_temporaries();
    say("\nkvsim: interrupted (");
    say(signal_name(sig));
    say(published ? "): the new results were already published in full\n"
                  : "): result temporaries removed, no result file replaced\n");
    _exit(128 + sig);
}

static void on_fault(int sig)
{
    const char *path = kv_trace_reading();
    if (!path) {
        /* not the reader's: let the previous handler (or the default) take it when the
         * faulting instruction runs again */
        const struct sigaction *prev = sig == SIGSEGV ? &prev_segv
                                       : sig == SIGBUS ? &prev_bus : &prev_fpe;
        sigaction(sig, prev, NULL);
        return;
    }
    remove_temporaries();
    say("kvsim: ");
    say(path);
    say(": damaged file: the HDF5 library faulted (");
    say(signal_name(sig));
    say(") reading it; no results written\n");
    _exit(1);
}

void kv_signals_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_interrupt;
    /* block the other interrupts while one is handled: the table is walked once */
    sigaddset(&sa.sa_mask, SIGINT);
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaddset(&sa.sa_mask, SIGHUP);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = on_fault;
    sa.sa_flags = SA_NODEFER;
    sigaction(SIGSEGV, &sa, &prev_segv);
    sigaction(SIGBUS, &sa, &prev_bus);
    sigaction(SIGFPE, &sa, &prev_fpe);
    signal(SIGXFSZ, SIG_IGN);
}

void kv_signals_hold(int hold)
{
    holding = hold != 0;
    if (!holding && pending)
        on_interrupt(pending);
}
