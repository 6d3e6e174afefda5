#!/usr/bin/env python3
"""Checks the crate's runtime dependency tree (normal dependencies, Linux):
every crate comes from crates.io and carries a license that allows use and
redistribution under MIT OR Apache-2.0. Prints one line per offender and
exits 1 if there is any. Standard library only: run by .ci/run."""

import json
import subprocess
import sys

# Permissive licenses compatible with shipping this crate as MIT OR Apache-2.0.
ALLOWED = {
    "MIT",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "ISC",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "Zlib",
    "0BSD",
    "Unlicense",
    "CDLA-Permissive-2.0",
}


def tokens(expression):
    """The words of an SPDX expression, with `X WITH Y` kept as one."""
    words = expression.replace("(", " ( ").replace(")", " ) ").split()
    out = []
    for word in words:
        if len(out) >= 2 and out[-1] == "WITH":
            out.pop()
            out[-1] = f"{out[-1]} WITH {word}"
        else:
            out.append(word)
    return out


def allowed(expression):
    """True when the SPDX expression can be satisfied with ALLOWED licenses."""
    words = tokens(expression)
    position = 0

    def any_of():  # a OR b OR ...
        nonlocal position
        ok = all_of()
        while position < len(words) and words[position] == "OR":
            position += 1
            ok = all_of() or ok
        return ok

    def all_of():  # a AND b AND ...
        nonlocal position
        ok = one()
        while position < len(words) and words[position] == "AND":
            position += 1
            ok = one() and ok
        return ok

    def one():
        nonlocal position
        word = words[position]
        position += 1
        if word == "(":
            ok = any_of()
            position += 1  # ")"
            return ok
        return word in ALLOWED

    ok = any_of()
    return ok and position == len(words)


def main():
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked",
             "--filter-platform", "x86_64-unknown-linux-gnu"],
            check=True, capture_output=True, text=True,
        ).stdout
    )
    packages = {p["id"]: p for p in metadata["packages"]}
    nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}
    root = metadata["resolve"]["root"]
    reachable, todo = set(), [root]
    while todo:
        current = todo.pop()
        if current in reachable:
            continue
        reachable.add(current)
        for dep in nodes[current]["deps"]:
            if any(kind["kind"] is None for kind in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    reachable.discard(root)
    problems = []
    for package_id in sorted(reachable):
        p = packages[package_id]
        name = f'{p["name"]} {p["version"]}'
        if not (p.get("source") or "").startswith("registry+https://github.com/rust-lang/crates.io-index"):
            problems.append(f"{name}: not from crates.io ({p.get('source')})")
        license_expression = p.get("license")
        if not license_expression:
            problems.append(f"{name}: no SPDX license expression")
        elif not allowed(license_expression):
            problems.append(f"{name}: license {license_expression!r} is not on the allowed list")
    for line in problems:
        print(f"dependency check: {line}")
    print(f"dependency check: {len(reachable)} runtime dependencies, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
