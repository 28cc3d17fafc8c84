/*
 * test_rules_random.c - the seeded random floor: policies/random.c against kept sets worked
 * out by hand on tiny traces.
 *
 * The driver of tests/kv_hand_replay.h plays the engine's part of the contract in
 * policy.h for one cache. Traces are tables of attention in sixteenths (so every value,
 * sum and tie below is exact in double precision) or a formula. Each expected set
 * carries its derivation in a comment; "h0"/"h1" are the two query heads of the group.
 * test_policy_conformance.c fails for a registered policy without a file like this one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policies/policy.h"
#include "tests/kv_hand_replay.h"

static void test_random(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 12, NULL }; /* rows do not matter */
    kv_hand_replay a, b, c;
    kv_hand_run_table_seeded("random", NULL, 9, 4, 1, &tb, 42, &a);
    kv_hand_run_table_seeded("random", NULL, 9, 4, 1, &tb, 42, &b);
    /* Reproducible: the same seed gives the same sets at every select. */
    for (int t = 8; t < 12; t++)
        assert_string_equal(a.kept[t], b.kept[t]);
    /* Another `seed` parameter (XORed into the same engine seed) draws other sets. */
    kv_hand_run_table_seeded("random", "seed=7", 9, 4, 1, &tb, 42, &c);
    int differ = 0;
    for (int t = 8; t < 12; t++)
        differ |= strcmp(a.kept[t], c.kept[t]) != 0;
    assert_true(differ);
    /* Every set holds B = 4 positions and ends with the current token. */
    for (int t = 8; t < 12; t++) {
        int n = 1;
        for (const char *p = a.kept[t]; *p; p++)
            n += *p == ',';
        assert_int_equal(n, 4);
        char tail[16];
        snprintf(tail, sizeof tail, ",%d", t);
        assert_non_null(strstr(a.kept[t], tail));
        assert_int_equal(strlen(strstr(a.kept[t], tail)), strlen(tail));
    }
}

/* Uniform: over 4000 seeds, the prompt compression (P = 9, B = 4: 8 keeps t = 8 and 3
 * of the other 8) keeps each of 0..7 with probability 3/8: 1500 times expected,
 * standard deviation sqrt(4000 * 3/8 * 5/8) = 30.6; every count within 5 of them. */
static void test_random_uniform(void **state)
{
    (void)state;
    kv_hand_table16 tb = { 10, NULL };
    int count[8] = { 0 };
    for (unsigned long seed = 1; seed <= 4000; seed++) {
        kv_hand_replay r;
        kv_hand_run_table_seeded("random", NULL, 9, 4, 1, &tb, seed * 2654435761u, &r);
        for (char *save = NULL, *tok = strtok_r(r.kept[8], ",", &save); tok;
             tok = strtok_r(NULL, ",", &save)) {
            int j = atoi(tok);
            if (j < 8)
                count[j]++;
        }
    }
    for (int j = 0; j < 8; j++)
        if (fabs(count[j] - 1500.0) > 5 * 30.6)
            fail_msg("position %d kept %d times of 4000, expected about 1500", j, count[j]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_random_uniform),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
