"""The sync gate (tools/sync_check.py) passes on this tree and fails when nbs/ and tinytorch/ disagree."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / 'tools'))
import sync_check  # noqa: E402


def gate(repo):
    return subprocess.run([sys.executable, str(ROOT / 'tools' / 'sync_check.py'), '--repo', str(repo)],
                          capture_output=True, text=True)


@pytest.fixture
def tree(tmp_path):
    "A copy of the working tree, as a git repository of its own."
    dest = tmp_path / 'tree'
    sync_check.copy_tree(ROOT, dest)
    subprocess.run(['git', 'init', '-q'], cwd=dest, check=True)
    subprocess.run(['git', 'add', '-A'], cwd=dest, check=True)
    return dest


def test_gate_passes_on_this_tree(tree):
    r = gate(tree)
    assert r.returncode == 0, r.stderr


def test_gate_fails_when_the_package_was_edited_by_hand(tree):
    path = tree / 'tinytorch' / 'tensor.py'
    path.write_text(path.read_text().replace('return x + y', 'return x - y', 1))
    r = gate(tree)
    assert r.returncode == 1 and 'tinytorch/tensor.py' in r.stderr


def test_gate_fails_when_a_notebook_was_not_exported(tree):
    path = tree / 'nbs' / '00_tensor.ipynb'
    nb = json.loads(path.read_text())
    cell = next(c for c in nb['cells'] if 'class Add(Function)' in ''.join(c['source']))
    cell['source'] = [line.replace('return x + y', 'return y + x') for line in cell['source']]
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    r = gate(tree)
    assert r.returncode == 1 and 'tinytorch/tensor.py' in r.stderr


def test_gate_fails_when_nbdev_clean_would_change_a_notebook(tree):
    path = tree / 'nbs' / '00_tensor.ipynb'
    nb = json.loads(path.read_text())
    nb['cells'][1]['execution_count'] = 7
    nb['metadata']['widgets'] = nb['metadata'].get('widgets', {})
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    r = gate(tree)
    assert r.returncode == 1 and 'nbs/00_tensor.ipynb' in r.stderr
