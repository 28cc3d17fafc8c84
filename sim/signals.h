/*
 * signals.h - what happens when a run is interrupted or the process faults, so that an
 * interrupted run never leaves a half-written result file behind.
 *
 * A run's new result set is built in a staging directory (sim/publish.h) and a trace from
 * gen or capture in a temporary file; both are registered here while they exist, and an
 * interrupting signal removes them before the process exits, so the output keeps either
 * its previous content or the complete new one.
 */
#ifndef KV_SIGNALS_H
#define KV_SIGNALS_H

/* Most temporaries registered at once (one per result file of a run). */
#define KV_TMP_MAX 16

/*
 * Installs the process's handlers (main() calls it once, before any subcommand):
 *   - SIGINT, SIGTERM, SIGHUP: remove the registered temporaries, print one line
 *     ("kvsim: interrupted (SIGINT): ...") and exit with status 128 + signal number;
 *   - SIGSEGV, SIGBUS, SIGFPE while the trace reader is inside an HDF5 call
 *     (kv_trace_reading() is not NULL): HDF5 1.10 trusts some on-disk fields of files
 *     without checksums, so a damaged file can fault inside the library. Prints one line
 *     naming the file, removes the temporaries and exits with status 1. A fault anywhere
 *     else goes to the handler that was installed before (a sanitizer's, or the default
 *     core dump), so bugs are not hidden;
 *   - SIGXFSZ ignored: a file-size limit then shows as a write error (EFBIG) with a
 *     message, not as a kill.
 * Cannot fail (a handler that cannot be installed is left as it was).
 */
void kv_signals_install(void);

/*
 * Registers path (copied) as a temporary to remove if the process is interrupted, before
 * the file is created. Returns 0, or -1 when KV_TMP_MAX temporaries are registered
 * already or path is too long (the caller should not create the file then).
 */
int kv_tmp_register(const char *path);

/* Forgets path (after it was renamed into place or removed). Unknown paths are ignored. */
void kv_tmp_unregister(const char *path);

/*
 * Registers directory path (copied) as a temporary to remove with everything in it (up to
 * KV_TREE_DEPTH levels: a result set and its figures/) if the process is interrupted or
 * the reader faults. Returns 0, or -1 when KV_TMP_MAX directories are registered already
 * or path is too long. kv_tmp_unregister_dir forgets it; unknown paths are ignored.
 */
#define KV_TREE_DEPTH 4
int kv_tmp_register_dir(const char *path);
void kv_tmp_unregister_dir(const char *path);

/*
 * Removes path and, when it is a directory, everything below it (at most KV_TREE_DEPTH
 * levels; symbolic links are removed, never followed). Async-signal-safe (open, getdents64,
 * unlinkat: no allocation), so the interrupt handler uses it too. Returns 0, or -1 with
 * errno set when something could not be removed (the rest is still removed).
 */
int kv_remove_tree(const char *path);

/*
 * hold = 1 defers SIGINT, SIGTERM and SIGHUP (recorded, in whichever thread they
 * arrive); hold = 0 acts on one that arrived meanwhile (exits as above). Used around the
 * renames that publish a run's files, so a run's files appear all together or not at
 * all. Cannot fail.
 */
void kv_signals_hold(int hold);

/* Called once a run's new result set is in place: an interrupt after this says so (the
 * exit status is still 128 + signal number) instead of "no result file replaced". */
void kv_signals_published(void);

#endif
