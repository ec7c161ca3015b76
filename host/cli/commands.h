/*
 * commands.h — the kqsvd CLI's commands. Each command lives in cmd_NAME.c,
 * takes the arguments after its name (argv[0] is the command name), prints
 * its own --help, reports errors on stderr naming what failed, and returns
 * the process exit code: 0 success, 1 failure, 2 usage error.
 */
#ifndef KQ_CLI_COMMANDS_H
#define KQ_CLI_COMMANDS_H

int kq_cmd_fit(int argc, char **argv);
int kq_cmd_eval(int argc, char **argv);
int kq_cmd_info(int argc, char **argv);
int kq_cmd_synth(int argc, char **argv);
int kq_cmd_devices(int argc, char **argv);
int kq_cmd_conformance(int argc, char **argv);
int kq_cmd_capture(int argc, char **argv);
int kq_cmd_ppl(int argc, char **argv);
int kq_cmd_generate(int argc, char **argv);
int kq_cmd_bench(int argc, char **argv);

/* `kqsvd info` on a GGUF file (cmd_info_gguf.c):
 * lists it as text or, with json != 0, one JSON object; returns the exit code. */
int kq_cli_info_gguf(const char *path, int json);

#endif
