/*
 * status.h - kvsim's status codes: each value means one thing in traces/, sim/ and on
 * the command line. Functions that can fail return one of these with a one-line message
 * in the caller's buffer; only main() exits, with kv_exit_status(code).
 *
 *   KV_OK        0  success
 *   KV_ERUNTIME  1  the work failed (exit status 1): the generic runtime failure
 *   KV_EUSAGE    2  the request is wrong (exit status 2): an option, a value, an
 *                   experiment file, or an argument outside a function's documented range
 *   KV_EIO       3  a file is missing, unreadable or cannot be written (exit status 1)
 *   KV_EFORMAT   4  a file reads but is not what it must be: not a valid trace or
 *                   checkpoint, damaged data, a bad value (exit status 1)
 *   KV_ENOMEM    5  an allocation failed (exit status 1)
 *
 * The libraries name their codes after these (KV_ETRACE_IO is KV_EIO, ...), so a code
 * passes up unchanged from the trace reader to main.
 */
#ifndef KV_STATUS_H
#define KV_STATUS_H

enum {
    KV_OK = 0,
    KV_ERUNTIME = 1,
    KV_EUSAGE = 2,
    KV_EIO = 3,
    KV_EFORMAT = 4,
    KV_ENOMEM = 5
};

/* The process exit status of a code: 0, 2 for KV_EUSAGE, 1 for every other failure. */
static inline int kv_exit_status(int code)
{
    return code == KV_OK ? 0 : code == KV_EUSAGE ? 2 : 1;
}

#endif
