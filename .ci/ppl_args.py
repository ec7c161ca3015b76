"""Shared by the scripts that read `kqsvd ppl --json` outputs (compare_ppl.py, kl_chart.py):
their command line, PPL.json files with optional `--label PROJ=NAME` and `-o OUT`."""


def parse(argv, want_out=False):
    """Returns (files, labels {proj: name}, out or None); None for files when the arguments
    are unusable (no file, or no -o where one is wanted)."""
    files, labels, out = [], {}, None
    i = 0
    while i < len(argv):
        if argv[i] == "--label" and i + 1 < len(argv):
            proj, _, name = argv[i + 1].partition("=")
            labels[proj] = name
            i += 2
        elif want_out and argv[i] == "-o" and i + 1 < len(argv):
            out = argv[i + 1]
            i += 2
        else:
            files.append(argv[i])
            i += 1
    if not files or (want_out and not out):
        return None, labels, out
    return files, labels, out
