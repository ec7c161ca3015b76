/*
 * check_json.c — reads `kqsvd conformance --json` output (file argument) and
 * checks it: valid JSON, at least one device and one case, every case
 * passed, every NMSE and threshold a finite number, the top-level "pass"
 * true. A case marked "unsupported" (a quantized / joint case the device
 * does not implement yet) is neither passed nor failed: it must not claim
 * "pass", and at least one case of the report must really pass. Prints what
 * is wrong and exits 1 otherwise.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int bad(const char *what, const char *name) {
  fprintf(stderr, "check_json: %s%s%s\n", what, name ? ": " : "", name ? name : "");
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 2) return bad("usage: check_json FILE", NULL);
  FILE *f = fopen(argv[1], "rb");
  if (!f) return bad("cannot open", argv[1]);
  static char text[1 << 22];
  size_t len = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[len] = 0;
  cJSON *root = cJSON_Parse(text);
  if (!root) return bad("not JSON", argv[1]);
  int fails = 0, n_cases = 0, n_passed = 0, n_unsupported = 0;
  cJSON *devs = cJSON_GetObjectItemCaseSensitive(root, "devices");
  if (!cJSON_IsArray(devs) || cJSON_GetArraySize(devs) < 1) fails += bad("no devices", NULL);
  cJSON *dev;
  cJSON_ArrayForEach(dev, devs) {
    cJSON *cases = cJSON_GetObjectItemCaseSensitive(dev, "cases");
    if (!cJSON_IsArray(cases)) {
      fails +=
          bad("device without cases", cJSON_GetStringValue(cJSON_GetObjectItem(dev, "device")));
      continue;
    }
    cJSON *c;
    cJSON_ArrayForEach(c, cases) {
      const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "name"));
      cJSON *nmse = cJSON_GetObjectItemCaseSensitive(c, "nmse");
      cJSON *thr = cJSON_GetObjectItemCaseSensitive(c, "threshold");
      n_cases++;
      int pass = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "pass"));
      if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "unsupported"))) {
        n_unsupported++;
        if (pass) fails += bad("unsupported case claims pass", name);
        continue;
      }
      n_passed += pass;
      if (!pass) fails += bad("failed", name);
      if (!cJSON_IsNumber(nmse) || !isfinite(nmse->valuedouble) || nmse->valuedouble < 0)
        fails += bad("NMSE not a finite number", name);
      if (!cJSON_IsNumber(thr) || !isfinite(thr->valuedouble) || thr->valuedouble < 0)
        fails += bad("threshold not a finite number", name);
      else if (cJSON_IsNumber(nmse) && nmse->valuedouble > thr->valuedouble &&
               !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "expect_error")))
        fails += bad("NMSE above threshold", name);
    }
  }
  if (n_cases == 0) fails += bad("no cases", NULL);
  if (n_cases > 0 && n_passed == 0) fails += bad("no case passed", NULL);
  if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "pass")))
    fails += bad("pass is not true", NULL);
  cJSON_Delete(root);
  if (!fails)
    printf("check_json: %d cases, %d passed with finite NMSE, %d unsupported\n", n_cases, n_passed,
           n_unsupported);
  return fails ? 1 : 0;
}
