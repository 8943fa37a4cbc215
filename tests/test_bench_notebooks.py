"""`python -m bench.notebooks`, the notebook-time table: that it runs every notebook it finds and reports each one.

No time is asserted (speed is measured in bench/, never tested): only what the table is made of."""
import json

import nbformat
import pytest

from bench import notebooks


def _notebook(path, sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# prose is not timed')]
                                  + [nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)


@pytest.mark.slow          # two kernels start: a few seconds on a quiet machine
def test_every_notebook_gets_a_row_with_its_cells(tmp_path, capsys):
    _notebook(tmp_path / '00_a.ipynb', ['#| export\nx = 1', 'sum(range(10 ** 6))',
                                        '#| hide\nif True: nbdev_export()'])      # NameError if it were run
    _notebook(tmp_path / '01_b.ipynb', ['raise ValueError("broken on purpose")', 'y = 2'])
    (tmp_path / 'index.ipynb').write_text((tmp_path / '00_a.ipynb').read_text())   # not a module notebook
    out = tmp_path / 'times.json'
    assert notebooks.main(['--nbs', str(tmp_path), '--out', str(out), '--markdown']) == 0
    report = json.loads(out.read_text())
    rows = {r['notebook']: r for r in report['notebooks']}
    assert list(rows) == ['00_a.ipynb', '01_b.ipynb']
    a, b = rows['00_a.ipynb'], rows['01_b.ipynb']
    assert [c['index'] for c in a['cells']] == [1, 2]   # code cells by their index; the export cell emptied, not run
    assert a['errors'] == []
    assert [c['index'] for c in b['cells']] == [1, 2]   # an error does not stop the notebook
    assert a['cells'][0]['first_line'] == 'x = 1'                   # nbdev directives are not a first line
    assert all(c['wall'] >= 0 and c['cpu'] >= 0 for c in a['cells'])
    assert a['wall'] == sum(c['wall'] for c in a['cells'])
    assert a['slowest'] in a['cells']
    assert [c['index'] for c in b['errors']] == [1] and 'broken on purpose' in b['errors'][0]['error']
    assert notebooks.verdict(b).startswith('ERRORS')
    assert report['meta']['threads'] == 1 and report['meta']['load_before']
    table = capsys.readouterr().out
    assert '| 00_a.ipynb |' in table and '| 01_b.ipynb |' in table and '|---|' in table
