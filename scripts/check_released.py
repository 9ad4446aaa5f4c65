#!/usr/bin/env python3
"""Guards of released SQL, run by scripts/test.sh.

1. The kept install script of the current version, sql/released/tally--V.sql,
   is what the code generates (`cargo pgrx schema`, passed as GENERATED):
   the same SQL objects, compared without pgrx's source-line comments and
   its ordering, which pgrx does not keep stable.
2. Released files never change: every install script in sql/released/ and
   every upgrade script sql/tally--A--B.sql whose B has been released is
   byte for byte what the commit that released it holds (the commit that
   added the install script sql/released/tally--B.sql; an upgrade script
   may be written over several commits before that).

Usage: scripts/check_released.py VERSION [GENERATED]
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASED = ROOT / "sql" / "released"
BLOCK = "/* <begin connected objects> */"
SOURCE_LINE = re.compile(r"^-- \S+\.rs:\d+$", re.MULTILINE)


def objects(script: str) -> list[str]:
    """The script's SQL objects, without source lines, in a stable order."""
    blocks = (SOURCE_LINE.sub("", block).strip() for block in script.split(BLOCK))
    return sorted(block for block in blocks if block)


def check_generated(version: str, generated: Path) -> list[str]:
    kept = RELEASED / f"tally--{version}.sql"
    if not kept.exists():
        return [f"{kept.relative_to(ROOT)} is missing: keep the generated install script of {version} there"]
    kept_objects, generated_objects = objects(kept.read_text()), objects(generated.read_text())
    if kept_objects == generated_objects:
        return []
    only_kept = [o for o in kept_objects if o not in generated_objects]
    only_generated = [o for o in generated_objects if o not in kept_objects]
    first = (only_generated or only_kept)[0].splitlines()
    return [
        f"{kept.relative_to(ROOT)} differs from what the code generates "
        f"({len(only_kept)} objects only kept, {len(only_generated)} only generated; "
        f"first difference near: {' / '.join(first[:3])}). "
        f"Released SQL never changes: give a schema change a new version and an upgrade script."
    ]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout


def released_files() -> list[Path]:
    versions = {p.name[len("tally--"):-len(".sql")] for p in RELEASED.glob("tally--*.sql")}
    files = sorted(RELEASED.glob("tally--*.sql"))
    for upgrade in sorted((ROOT / "sql").glob("tally--*--*.sql")):
        target = upgrade.name[:-len(".sql")].split("--")[2]
        if target in versions:
            files.append(upgrade)
    return files


def release_of(path: Path) -> str:
    """The kept install script whose commit released `path`."""
    name = path.name[:-len(".sql")]
    version = name.split("--")[-1]
    return (RELEASED / f"tally--{version}.sql").relative_to(ROOT).as_posix()


def check_unchanged() -> list[str]:
    try:
        if git("rev-parse", "--is-shallow-repository").strip() == "true":
            return ["this clone is shallow: the history that proves released SQL unchanged is missing (clone it whole)"]
    except (subprocess.CalledProcessError, FileNotFoundError):
        print("  not a git checkout: cannot compare released SQL with its release; skipped", file=sys.stderr)
        return []
    problems = []
    for path in released_files():
        relative = path.relative_to(ROOT).as_posix()
        added = git("log", "--diff-filter=A", "--format=%H", "--", release_of(path)).split()
        if not added:
            continue  # released by the change being tested: nothing to compare with yet
        original = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{added[-1]}:{relative}"], check=True, capture_output=True
        ).stdout
        if path.read_bytes() != original:
            problems.append(f"{relative} was changed after its release in {added[-1][:12]}: released SQL is never edited")
    return problems


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    version = sys.argv[1]
    problems = check_unchanged()
    checked = len(released_files())
    if len(sys.argv) == 3:
        problems += check_generated(version, Path(sys.argv[2]))
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    if problems:
        print("test result: FAILED. 0 passed; 1 failed", file=sys.stderr)
        return 1
    print(f"{checked} released SQL files unchanged; tally--{version}.sql is what the code generates")
    print("test result: ok. 2 passed; 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
