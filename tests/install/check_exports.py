#!/usr/bin/env python3
"""libkqsvd exports exactly the functions its installed headers declare.

Usage: check_exports.py LIBKQSVD.so HEADER...

The exported set is `nm -D --defined-only` (functions and data). The declared
set is every function declaration in the headers (static inline helpers are
header code, not exports). Fails when the library exports a name no header
declares, when a declared function is not exported, or when a declaration
lacks KQ_API (it would only be exported by accident).
"""
import re
import subprocess
import sys


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def drop_inline_bodies(text):
    """Removes `static inline ... { ... }` definitions (brace matched)."""
    out, i = [], 0
    for m in re.finditer(r"\bstatic\s+inline\b", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        j = text.find("{", m.end())
        depth = 0
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1
    out.append(text[i:])
    return "".join(out)


def declarations(paths):
    marked, unmarked = set(), set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = drop_inline_bodies(strip_comments(f.read()))
        text = re.sub(r"^\s*#.*$", " ", text, flags=re.M)  # preprocessor lines
        # A declaration: statements ending in ';' whose last call-like name
        # before the parameter list is kq_*, not a function pointer typedef.
        for stmt in text.split(";"):
            stmt = " ".join(stmt.split())
            if stmt.startswith("typedef") or "{" in stmt:
                stmt = stmt.rsplit("}", 1)[-1].strip()
                if not stmt or stmt.startswith("typedef"):
                    continue
            m = re.match(r"^(?:KQ_API\s+)?[\w\s\*]*?\b(kq_\w+)\s*\((?!\s*\*)", stmt)
            if not m:
                continue
            (marked if stmt.startswith("KQ_API") else unmarked).add(m.group(1))
    return marked, unmarked


def exports(lib):
    out = subprocess.run(["nm", "-D", "--defined-only", lib], check=True, capture_output=True,
                         text=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in "TtDdBbRrVvWwiu":
            names.add(parts[2].split("@")[0])
    return names


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    lib, headers = sys.argv[1], sys.argv[2:]
    marked, unmarked = declarations(headers)
    exported = exports(lib)
    problems = []
    for name in sorted(unmarked):
        problems.append(f"declared without KQ_API: {name}")
    declared = marked | unmarked
    for name in sorted(exported - declared):
        problems.append(f"exported but not declared in {', '.join(headers)}: {name}")
    for name in sorted(declared - exported):
        problems.append(f"declared but not exported by {lib}: {name}")
    if not declared:
        problems.append("no function declarations found in the headers")
    for p in problems:
        print(p)
    print(f"{lib}: {len(exported)} exported, {len(declared)} declared, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
