"""The sync gate: `tinytorch/` must be exactly what `nbdev-export` makes of `nbs/`, README.md what
tools/readme.py makes of nbs/index.ipynb, and `nbdev-clean` must change no notebook. Works on a copy of the tree (tracked files plus untracked, not ignored ones), so it never touches
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

CHECKED = ('nbs', 'tinytorch', 'README.md')


def tree_files(repo: Path) -> list:
    "Files of the working tree that git would commit (tracked, or untracked and not ignored)."
    out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                         cwd=repo, capture_output=True, check=True).stdout
    return [Path(p) for p in out.decode().split('\0') if p and (repo / p).exists()]


def copy_tree(repo: Path, dest: Path):
    for rel in tree_files(repo):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, dest / rel)


def _files(tree: Path, top: str) -> set:
    path = tree / top
    found = [path] if path.is_file() else path.rglob('*')
    return {p.relative_to(tree) for p in found if p.is_file() and '__pycache__' not in p.parts}


def differences(a: Path, b: Path) -> list:
    "Relative paths under CHECKED that differ between trees `a` and `b`, or exist in only one."
    found = []
    for top in CHECKED:
        files_a, files_b = _files(a, top), _files(b, top)
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
        for cmd in ([str(bindir / 'nbdev-export')], [str(bindir / 'nbdev-clean')],
                    [sys.executable, str(Path(__file__).resolve().parent / 'readme.py'), '--repo', str(work)]):
            r = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
            if r.returncode != 0:
                print(f'sync gate: {" ".join(cmd)} failed:\n{r.stdout}{r.stderr}', file=sys.stderr)
                return 1
        diff = differences(repo, work)
    if diff:
        print('sync gate FAILED: these files change when nbdev-export and nbdev-clean run, so tinytorch/ and nbs/ '
              'disagree (edit nbs/, then run `make export` (nbdev-export + README) and nbdev-clean, and commit both):', file=sys.stderr)
        for rel in diff:
            print(f'  {rel}', file=sys.stderr)
        return 1
    print(f'sync gate: tinytorch/ matches nbs/, and nbdev-clean changes no notebook')
    return 0


if __name__ == '__main__':
    sys.exit(main())
