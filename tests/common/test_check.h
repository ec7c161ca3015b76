/*
 * test_check.h — the tests' check of a library call: fails the running
 * cmocka test with the library's own message (kq_last_error) when the call
 * does not return KQ_OK. Include after cmocka.h and kqsvd.h.
 */
#ifndef KQ_TEST_CHECK_H
#define KQ_TEST_CHECK_H

#define KQ_TEST_OK(expr)                                                                           \
  do {                                                                                             \
    kq_status st_ = (expr);                                                                        \
    if (st_ != KQ_OK) fail_msg("%s -> %d: %s", #expr, (int)st_, kq_last_error());                  \
  } while (0)

#endif /* KQ_TEST_CHECK_H */
