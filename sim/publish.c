/*
 * publish.c - the locked, all-or-nothing output directory of a run (see publish.h).
 */
#define _GNU_SOURCE   /* renameat2, RENAME_EXCHANGE */
#include "sim/publish.h"
#include "sim/output.h"
#include "sim/signals.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define STAGING_TAG ".kvsim.tmp."

int kv_result_set_is_result(const char *name)
{
    /* .NAME.tmp.PID: a result temporary an older kvsim, killed, left inside */
    int leftover = name[0] == '.' && strstr(name, ".tmp.") != NULL;
    return strcmp(name, "figures") == 0 || strcmp(name, "manifest.json") == 0
           || kv_output_is_result_file(name) || leftover;
}

/* Splits absolute path into its parent directory and last name. */
static void split_path(const char *path, char *parent, size_t plen, const char **name)
{
    const char *slash = strrchr(path, '/');
    *name = slash + 1;
    snprintf(parent, plen, "%.*s", slash == path ? 1 : (int)(slash - path), path);
}

/*
 * Opens and locks DIR (created when missing). The lock is taken on the directory that is
 * at the path once the lock is held: a run that published meanwhile exchanged it, so the
 * lock is taken again on the new one. Returns 0, 1 or 2 (locked by another run).
 */
static int lock_dir(kv_result_set *rs, const char *dir, char *err, size_t err_len)
{
    struct stat st;
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
        snprintf(err, err_len, "%s: exists and is not a directory", dir);
        return 1;
    }
    if (kv_make_dirs(dir) != 0 || !realpath(dir, rs->dir)) {
        snprintf(err, err_len, "%s: cannot create the output directory: %s", dir,
                 strerror(errno));
        return 1;
    }
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = open(rs->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
            snprintf(err, err_len, "%s: cannot open the output directory: %s", dir,
                     strerror(errno));
            return 1;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            close(fd);
            if (e == EWOULDBLOCK) {
                snprintf(err, err_len, "%s: another kvsim run is writing into this output "
                         "directory; wait for it to finish or choose another -o", dir);
                return 2;
            }
            snprintf(err, err_len, "%s: cannot lock the output directory: %s", dir,
                     strerror(e));
            return 1;
        }
        struct stat held, now;
        if (fstat(fd, &held) == 0 && stat(rs->dir, &now) == 0 && held.st_ino == now.st_ino
            && held.st_dev == now.st_dev) {
            rs->dir_fd = fd;
            return 0;
        }
        close(fd);   /* replaced while we waited: lock the directory there now */
    }
    snprintf(err, err_len, "%s: the output directory keeps being replaced", dir);
    return 1;
}

/* Empty, or (force) only kvsim results. Returns 0 or 2 (err set), 1 when unreadable. */
static int check_contents(const kv_result_set *rs, const char *dir, int force, char *err,
                          size_t err_len)
{
    int fd = dup(rs->dir_fd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        snprintf(err, err_len, "%s: cannot read the output directory: %s", dir,
                 strerror(errno));
        return 1;
    }
    int n = 0, rc = 0;
    for (struct dirent *e; (e = readdir(d)) && rc == 0;) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        n++;
        if (force && !kv_result_set_is_result(e->d_name)) {
            snprintf(err, err_len, "%s: holds '%s', which is not a kvsim result; the output "
                     "directory is replaced as a whole, so choose another -o", dir, e->d_name);
            rc = 2;
        }
    }
    closedir(d);
    if (rc == 0 && n && !force) {
        snprintf(err, err_len, "%s: output directory is not empty (%d entries); use --force "
                 "to overwrite its result files", dir, n);
        rc = 2;
    }
    return rc;
}

/* Removes what killed runs into DIR left beside it (.NAME.kvsim.tmp.*). Only called
 * while holding DIR's lock, so no live run owns them. */
static void remove_stale(const char *parent, const char *name)
{
    char prefix[NAME_MAX + 32], path[KV_PATH_LEN + NAME_MAX + 2];
    snprintf(prefix, sizeof prefix, ".%s" STAGING_TAG, name);
    DIR *d = opendir(parent);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d));)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
            snprintf(path, sizeof path, "%s/%s", parent, e->d_name);
            kv_remove_tree(path);
        }
    closedir(d);
}

/* DIR's permission bits, which the new set keeps. */
static mode_t dir_mode(const kv_result_set *rs)
{
    struct stat st;
    return fstat(rs->dir_fd, &st) == 0 ? st.st_mode & 07777 : 0755;
}

int kv_result_set_begin(kv_result_set *rs, const char *dir, int force, char *err,
                        size_t err_len)
{
    memset(rs, 0, sizeof *rs);
    rs->dir_fd = rs->staging_fd = -1;
    int rc = lock_dir(rs, dir, err, err_len);
    if (rc == 0)
        rc = check_contents(rs, dir, force, err, err_len);
    char parent[KV_PATH_LEN];
    const char *name;
    if (rc == 0) {
        split_path(rs->dir, parent, sizeof parent, &name);
        if (!*name) {
            snprintf(err, err_len, "%s: cannot replace the root directory", dir);
            rc = 2;
        } else if (snprintf(rs->staging, sizeof rs->staging, "%s/.%s" STAGING_TAG "%ld",
                            strcmp(parent, "/") ? parent : "", name, (long)getpid())
                   >= (int)sizeof rs->staging) {
            snprintf(err, err_len, "%s: path too long", dir);
            rc = 1;
        }
    }
    if (rc == 0) {
        remove_stale(parent, name);
        /* registered before it exists, so an interrupt removes it (sim/signals.h) */
        if (kv_tmp_register_dir(rs->staging) != 0 || mkdir(rs->staging, 0777) != 0
            || (rs->staging_fd = open(rs->staging, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0
            || flock(rs->staging_fd, LOCK_EX | LOCK_NB) != 0
            || fchmod(rs->staging_fd, dir_mode(rs)) != 0) {
            snprintf(err, err_len, "%s: cannot make the staging directory beside it: %s", dir,
                     strerror(errno));
            rc = 1;
        }
    }
    if (rc)
        kv_result_set_end(rs);
    return rc;
}

/* fsync of a path (a directory, so the entries in it reach the disk before the switch). */
static int sync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* The exchange, or its fallback (publish.h). 0, or -1 with errno set. */
static int switch_sets(const kv_result_set *rs)
{
    if (renameat2(AT_FDCWD, rs->staging, AT_FDCWD, rs->dir, RENAME_EXCHANGE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
        return -1;
    if (rename(rs->staging, rs->dir) == 0)   /* DIR was empty: atomic as well */
        return 0;
    char aside[KV_PATH_LEN + 8];
    snprintf(aside, sizeof aside, "%s.old", rs->staging);
    if (rename(rs->dir, aside) != 0)
        return -1;
    if (rename(rs->staging, rs->dir) != 0) {
        int e = errno;
        rename(aside, rs->dir);   /* put the old set back */
        errno = e;
        return -1;
    }
    return rename(aside, rs->staging) == 0 ? 0 : -1;   /* so it is removed as the old set */
}

int kv_result_set_publish(kv_result_set *rs, char *err, size_t err_len)
{
    char figures[KV_PATH_LEN + 16];
    snprintf(figures, sizeof figures, "%s/figures", rs->staging);
    struct stat st;
    if ((stat(figures, &st) == 0 && sync_path(figures) != 0) || fsync(rs->staging_fd) != 0) {
        snprintf(err, err_len, "%s: cannot sync the new results: %s", rs->staging,
                 strerror(errno));
        return 1;
    }
    kv_signals_hold(1);
    int rc = switch_sets(rs);
    int e = errno;
    if (rc == 0) {
        kv_signals_published();
        /* the old set is at the staging path now; removed while interrupts wait, so an
         * interrupt cannot leave half of it behind */
        kv_remove_tree(rs->staging);
        kv_tmp_unregister_dir(rs->staging);
        rs->staging[0] = '\0';
        char parent[KV_PATH_LEN];
        const char *name;
        split_path(rs->dir, parent, sizeof parent, &name);
        sync_path(parent);
    }
    kv_signals_hold(0);
    if (rc != 0)
        snprintf(err, err_len, "%s: cannot put the new results in place: %s", rs->dir,
                 strerror(e));
    return rc ? 1 : 0;
}

void kv_result_set_end(kv_result_set *rs)
{
    if (rs->staging[0]) {
        kv_remove_tree(rs->staging);
        kv_tmp_unregister_dir(rs->staging);
        rs->staging[0] = '\0';
    }
    if (rs->staging_fd >= 0)
        close(rs->staging_fd);
    if (rs->dir_fd >= 0)
        close(rs->dir_fd);
    rs->staging_fd = rs->dir_fd = -1;
}

/* ------------------------------------------------------------ single output files */

/* Removes .NAME.tmp.PID files beside target whose process no longer runs. */
static void remove_dead_temporaries(const char *parent, const char *name)
{
    char prefix[NAME_MAX + 16], path[KV_PATH_LEN + NAME_MAX + 2];
    snprintf(prefix, sizeof prefix, ".%s.tmp.", name);
    DIR *d = opendir(parent);
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        char *end;
        long pid = strtol(e->d_name + strlen(prefix), &end, 10);
        if (*end || pid <= 0 || (kill((pid_t)pid, 0) != 0 && errno == ESRCH)) {
            snprintf(path, sizeof path, "%s/%s", parent, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
}

int kv_out_file_begin(kv_out_file *f, const char *target, char *err, size_t err_len)
{
    memset(f, 0, sizeof *f);
    struct stat st;
    if (stat(target, &st) == 0 && !S_ISREG(st.st_mode)) {
        snprintf(err, err_len, "%s: exists and is not a regular file", target);
        return 1;
    }
    if (snprintf(f->target, sizeof f->target, "%s", target) >= (int)sizeof f->target) {
        snprintf(err, err_len, "%s: path too long", target);
        return 1;
    }
    const char *slash = strrchr(target, '/');
    const char *name = slash ? slash + 1 : target;
    int dir_len = slash ? (int)(slash - target) + 1 : 0;   /* with its trailing '/' */
    char parent[KV_PATH_LEN];
    snprintf(parent, sizeof parent, "%.*s", dir_len ? dir_len : 1, dir_len ? target : ".");
    snprintf(f->tmp, sizeof f->tmp, "%.*s.%s.tmp.%ld", dir_len, target, name, (long)getpid());
    remove_dead_temporaries(parent, name);
    if (kv_tmp_register(f->tmp) != 0) {
        snprintf(err, err_len, "%s: too many temporary files", f->tmp);
        f->tmp[0] = '\0';
        return 1;
    }
    return 0;
}

int kv_out_file_commit(kv_out_file *f, char *err, size_t err_len)
{
    int fd = open(f->tmp, O_RDONLY | O_CLOEXEC);
    int rc = fd < 0 || fsync(fd) != 0 ? -1 : 0;
    if (fd >= 0)
        close(fd);
    kv_signals_hold(1);
    if (rc == 0)
        rc = rename(f->tmp, f->target);
    if (rc != 0) {
        snprintf(err, err_len, "%s: cannot put the new file in place: %s", f->target,
                 strerror(errno));
        unlink(f->tmp);
    }
    kv_tmp_unregister(f->tmp);
    kv_signals_hold(0);
    f->tmp[0] = '\0';
    return rc ? 1 : 0;
}

void kv_out_file_abort(kv_out_file *f, char *msg, size_t msg_len)
{
    if (!f->tmp[0])
        return;
    char *at = msg ? strstr(msg, f->tmp) : NULL;
    if (at) {
        char rest[1024];
        snprintf(rest, sizeof rest, "%s", at + strlen(f->tmp));
        snprintf(at, msg_len - (size_t)(at - msg), "%s%s", f->target, rest);
    }
    unlink(f->tmp);
    kv_tmp_unregister(f->tmp);
    f->tmp[0] = '\0';
}
