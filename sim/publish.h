/*
 * publish.h - a run's output directory: locked against a second run, and replaced as a
 * whole, so that after any interruption it holds the complete previous result set or the
 * complete new one, never a mix.
 *
 *   1. kv_result_set_begin: creates the output directory DIR when missing, locks it
 *      (flock on the directory; a second run is refused), checks that it is empty or
 *      (--force) holds only kvsim results, removes what an earlier killed run left beside
 *      it, and makes the staging directory PARENT/.NAME.kvsim.tmp.PID, locked too;
 *   2. the caller writes the whole new set into rs->staging: TSVs (kv_output_write),
 *      manifest.json (kv_manifest_write) and figures (kv_plot_render into
 *      rs->staging/figures);
 *   3. kv_result_set_publish: fsyncs the staging directory and exchanges it with DIR in
 *      one rename (renameat2 RENAME_EXCHANGE, Linux 3.15+, ext4/xfs/btrfs/tmpfs), then
 *      removes the old set, now at the staging path.
 *
 * Fallback where the file system cannot exchange (EINVAL, ENOSYS: NFS, some FUSE):
 * rename(2) over DIR when DIR is empty (atomic too); otherwise DIR is renamed aside to
 * .NAME.kvsim.tmp.PID.old and the staging directory into its place: between those two
 * renames (interrupts deferred, so only SIGKILL or a crash can land there) DIR does not
 * exist, and the previous set is at the .old path.
 *
 * Interrupts (SIGINT, SIGTERM, SIGHUP) remove the staging directory (sim/signals.h); what
 * a SIGKILL leaves (.NAME.kvsim.tmp.*) is removed by the next run into DIR, which holds the
 * lock and so knows no other run is using it. The lock is an flock(2) on the directories,
 * released when the process ends however it ends.
 */
#ifndef KV_PUBLISH_H
#define KV_PUBLISH_H

#include <stddef.h>

#include "sim/config.h"   /* KV_PATH_LEN */

typedef struct {
    char dir[KV_PATH_LEN];       /* DIR, resolved (no symbolic links) */
    char staging[KV_PATH_LEN];   /* the new set is built here */
    int dir_fd, staging_fd;      /* the locked directories, -1 when not open */
} kv_result_set;

/*
 * Step 1 above, for output directory dir (borrowed); force allows replacing a directory
 * of kvsim results. Returns 0; 2 (usage) when another run holds the lock, or DIR is not
 * empty and force is 0, or DIR holds entries that are not kvsim results (named: replacing
 * DIR would delete them); 1 when DIR is not a directory or cannot be created, locked or
 * read, or the staging directory cannot be made. err says which. On failure nothing is
 * held and nothing was created but DIR (and its parents).
 */
int kv_result_set_begin(kv_result_set *rs, const char *dir, int force, char *err,
                        size_t err_len);

/* Step 3 above. Returns 0, or 1 with err set (DIR then still holds the old set, and the
 * staging directory is removed). Releases nothing: call kv_result_set_end. */
int kv_result_set_publish(kv_result_set *rs, char *err, size_t err_len);

/* Removes the staging directory when it is still there (a failed run) and releases the
 * locks. Safe to call on a zeroed, begun, published or failed rs. Cannot fail. */
void kv_result_set_end(kv_result_set *rs);

/* 1 when name (an entry of an output directory) is one kvsim writes there: a result file
 * of sim/output.h, manifest.json, figures/, or a result temporary (.NAME.tmp.PID) a
 * killed run left. */
int kv_result_set_is_result(const char *name);

/*
 * One output file (a trace from `kvsim gen` or `kvsim capture`) written in full before it
 * replaces anything: the writer writes tmp, PARENT/.NAME.tmp.PID beside the target (same
 * file system, so the rename is atomic), and kv_out_file_commit fsyncs it and renames it
 * over the target. An interrupt removes tmp (sim/signals.h), so an existing target is
 * never destroyed; what a SIGKILL leaves is removed by the next begin on the same target
 * once its process is gone.
 */
typedef struct {
    char target[KV_PATH_LEN];
    char tmp[KV_PATH_LEN + 32];
} kv_out_file;

/* Prepares f for target (borrowed). Returns 0, or 1 with err set (target is a directory
 * or not a regular file, the path is too long, too many temporaries). */
int kv_out_file_begin(kv_out_file *f, const char *target, char *err, size_t err_len);

/* Puts the complete tmp in place of the target. Returns 0, or 1 with err set (tmp then
 * removed, the target untouched). */
int kv_out_file_commit(kv_out_file *f, char *err, size_t err_len);

/* Removes tmp (a failed write) and, when msg (msg_len bytes, may be NULL) names tmp, makes
 * it name the target instead. Cannot fail. */
void kv_out_file_abort(kv_out_file *f, char *msg, size_t msg_len);

#endif
