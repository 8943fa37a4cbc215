"""The sync gate: `tinytorch/` must be exactly what `nbdev-export` makes of `nbs/`, and `nbdev-clean` must change
no notebook. Works on a copy of the tree (tracked files plus untracked, not ignored ones), so it never touches
your work; exits 1 and names every file that differs.

    python tools/sync_check.py [--repo DIR]
"""
import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECKED = ('nbs', 'tinytorch')


def tree_files(repo: Path) -> list:
    "Files of the working tree that git would commit (tracked, or untracked and not ignored)."
    out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                         cwd=repo, capture_output=True, check=True).stdout
    return [Path(p) for p in out.decode().split('\0') if p and (repo / p).exists()]


def copy_tree(repo: Path, dest: Path):
    for rel in tree_files(repo):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, dest / rel)


def differences(a: Path, b: Path) -> list:
    "Relative paths under CHECKED that differ between trees `a` and `b`, or exist in only one."
    found = []
    for top in CHECKED:
        files_a = {p.relative_to(a) for p in (a / top).rglob('*') if p.is_file() and '__pycache__' not in p.parts}
        files_b = {p.relative_to(b) for p in (b / top).rglob('*') if p.is_file() and '__pycache__' not in p.parts}
        for rel in sorted(files_a | files_b):
            if rel not in files_a or rel not in files_b or not filecmp.cmp(a / rel, b / rel, shallow=False):
                found.append(str(rel))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repo', type=Path, default=Path(__file__).resolve().parent.parent)
    repo = parser.parse_args(argv).repo.resolve()
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix='tinytorch-sync-') as tmp:
        work = Path(tmp) / 'tree'
        copy_tree(repo, work)
        for tool in ('nbdev-export', 'nbdev-clean'):
            r = subprocess.run([str(bindir / tool)], cwd=work, capture_output=True, text=True)
            if r.returncode != 0:
                print(f'sync gate: {tool} failed:\n{r.stdout}{r.stderr}', file=sys.stderr)
                return 1
        diff = differences(repo, work)
    if diff:
        print('sync gate FAILED: these files change when nbdev-export and nbdev-clean run, so tinytorch/ and nbs/ '
              'disagree (edit nbs/, then run nbdev-clean and nbdev-export, and commit both):', file=sys.stderr)
        for rel in diff:
            print(f'  {rel}', file=sys.stderr)
        return 1
    print(f'sync gate: tinytorch/ matches nbs/, and nbdev-clean changes no notebook')
    return 0


if __name__ == '__main__':
    sys.exit(main())
