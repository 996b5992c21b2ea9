"""Replace the repository's pointers to the unpublished SPEC.md by the map in docs/spec_pointer_map.tsv.

    python docs/apply_spec_map.py REPO_ROOT [--map MAP.tsv] [--dry-run]

The map has one ``pattern<TAB>replacement`` per line; in either column the two characters backslash-n stand
for a newline (a few pointers are split across lines). Patterns are applied as plain string replacements,
longest first, to every *.py, *.md and *.yaml file under REPO_ROOT except .git/, tests/golden/ and this
tool's own files. Prints each changed file with its number of replacements, the patterns that matched
nothing, and every remaining occurrence of the word SPEC (identifiers such as TABLE_SPECS are not the word).
Exit status 1 when some occurrence remains.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

SUFFIXES = (".py", ".md", ".yaml")
SKIP_DIRS = {".git", os.path.join("tests", "golden")}
SELF = {os.path.join("docs", "apply_spec_map.py")}
WORD = re.compile(r"(?<![A-Za-z0-9_])SPEC(?![A-Za-z0-9_])")


def read_map(path: str) -> list[tuple[str, str]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            if line.count("\t") != 1:
                sys.exit(f"{path}:{number}: expected pattern<TAB>replacement")
            pattern, replacement = (col.replace("\\n", "\n") for col in line.split("\t"))
            rows.append((pattern, replacement))
    # longest first, so a composite pointer is replaced before the shorter one it contains
    return sorted(rows, key=lambda row: len(row[0]), reverse=True)


def repo_files(root: str):
    for folder, dirs, files in os.walk(root):
        rel_folder = os.path.relpath(folder, root)
        dirs[:] = sorted(d for d in dirs if os.path.normpath(os.path.join(rel_folder, d)) not in SKIP_DIRS)
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(rel_folder, name))
            if name.endswith(SUFFIXES) and rel not in SELF:
                yield rel


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="repository root")
    parser.add_argument("--map", default=os.path.join(here, "spec_pointer_map.tsv"))
    parser.add_argument("--dry-run", action="store_true", help="report only, write nothing")
    args = parser.parse_args()

    rows = read_map(args.map)
    used = {pattern: 0 for pattern, _ in rows}
    leftovers = []
    for rel in repo_files(args.root):
        path = os.path.join(args.root, rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new, count = text, 0
        for pattern, replacement in rows:
            hits = new.count(pattern)
            if hits:
                new = new.replace(pattern, replacement)
                used[pattern] += hits
                count += hits
        if count:
            print(f"changed {rel}: {count} replacement(s)")
            if not args.dry_run:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
        for number, line in enumerate(new.splitlines(), 1):
            if WORD.search(line):
                leftovers.append(f"{rel}:{number}: {line.strip()}")

    print(f"{sum(used.values())} replacement(s) from {sum(1 for n in used.values() if n)} of {len(rows)} patterns")
    unused = [pattern for pattern, n in used.items() if not n]
    if unused:
        print("patterns that matched nothing:")
        for pattern in unused:
            print("  " + pattern.replace("\n", "\\n"))
    if leftovers:
        print(f"{len(leftovers)} remaining SPEC occurrence(s):")
        for line in leftovers:
            print("  " + line)
        return 1
    print("no SPEC occurrence left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
