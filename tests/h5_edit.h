/*
 * h5_edit.h - test helpers that damage valid trace files in place (HDF5 API), shared by
 * test_trace_io.c and test_validate.c. Each opens the file read-write, makes one change
 * and closes every handle; a failed HDF5 call fails the test (cmocka assert).
 * Include after <cmocka.h> and <hdf5.h>.
 */
#ifndef KV_TEST_H5_EDIT_H
#define KV_TEST_H5_EDIT_H

#include <string.h>

/* Replaces root attribute name by a scalar of file type ftype holding *value (memory type
 * mtype). */
__attribute__((unused)) static void replace_root_attr(const char *path, const char *name,
                                                      hid_t ftype, hid_t mtype,
                                                      const void *value)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    assert_true(f >= 0);
    H5Adelete(f, name);
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, ftype, s, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(a >= 0 && H5Awrite(a, mtype, value) >= 0);
    H5Aclose(a);
    H5Sclose(s);
    H5Fclose(f);
}

/* Replaces root attribute name by an int64 scalar. */
__attribute__((unused)) static void set_int_attr(const char *path, const char *name, long long value)
{
    replace_root_attr(path, name, H5T_STD_I64LE, H5T_NATIVE_LLONG, &value);
}

/* Replaces root attribute name by a float64 scalar. */
__attribute__((unused)) static void set_real_attr(const char *path, const char *name, double value)
{
    replace_root_attr(path, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

/* Replaces root attribute name by a fixed-length string. */
__attribute__((unused)) static void set_string_attr(const char *path, const char *name, const char *value)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(value) + 1);
    replace_root_attr(path, name, t, t, value);
    H5Tclose(t);
}

/* Deletes root attribute (is_attr) or link name. */
__attribute__((unused)) static void delete_object(const char *path, const char *name, int is_attr)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    assert_true(f >= 0);
    assert_true((is_attr ? H5Adelete(f, name) : H5Ldelete(f, name, H5P_DEFAULT)) >= 0);
    H5Fclose(f);
}

/* Replaces dataset name by one of the given rank, dims and type (contents unwritten). */
__attribute__((unused)) static void replace_dataset(const char *path, const char *name, int rank, const hsize_t *dims,
                            hid_t type)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    assert_true(f >= 0);
    H5Ldelete(f, name, H5P_DEFAULT);
    hid_t s = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(f, name, type, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(d >= 0);
    H5Dclose(d);
    H5Sclose(s);
    H5Fclose(f);
}


#endif
