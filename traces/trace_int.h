/*
 * trace_int.h - helpers shared by the trace reader, writer and the generator, and the
 * HDF5 handles `kvsim info` (sim/cmd_info.c) reports storage from. Internal to the trace
 * library: nothing else outside traces/ (but its tests) includes it.
 */
#ifndef KV_TRACE_INT_H
#define KV_TRACE_INT_H

#include <stddef.h>
#include <stdint.h>
#include <hdf5.h>

#include "traces/trace.h"

/*
 * Writes printf-style fmt into err[0..err_len) (NUL-terminated, truncated if longer; err
 * may be NULL or err_len 0) and returns code, so callers can `return kv_trace_fail(...)`.
 */
int kv_trace_fail(char *err, size_t err_len, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Applies kv_trace_set_verbose's setting to the calling thread's HDF5 error stack (the
 * threadsafe HDF5 keeps one stack per thread), so every public entry point calls it first.
 * Cannot fail.
 */
void kv_trace_quiet(void);

/* The open HDF5 file behind tr (borrowed; for `kvsim info`'s storage report). */
hid_t kv_trace_hid(const kv_trace *tr);

/*
 * A new HDF5 datatype id for IEEE 754 binary16, little-endian: the layout h5py and numpy
 * call float16. The caller closes it with H5Tclose. Negative on failure.
 */
hid_t kv_trace_f16_type(void);

/*
 * Writes a short name of an HDF5 datatype into buf: "float16", "float32", "int64",
 * "uint8", "string", or the class name for anything else. Cannot fail.
 */
void kv_trace_type_name(hid_t type, char *buf, size_t len);

/*
 * Rounds a float32 to the nearest IEEE binary16 (ties to even), returning its bits;
 * overflow gives +-inf, NaN stays NaN (quiet). Cannot fail.
 */
uint16_t kv_half_from_float(float f);

/* The float32 value of IEEE binary16 bits h (exact). Cannot fail. */
float kv_half_to_float(uint16_t h);

/* The open HDF5 file behind a writer (borrowed; for extra datasets such as the
 * generator's /generator group). */
hid_t kv_trace_writer_hid(const kv_trace_writer *w);

#endif
