"""Convert course notebooks to and from a plain-text form that is easy to write and review.

The `.ipynb` files in `nbs/` stay the single source; this is an editing aid, nothing imports it.

    python tools/nbtext.py totext nbs/00_tensor.ipynb > /tmp/00.txt   # notebook -> text
    python tools/nbtext.py tonb /tmp/00.txt nbs/00_tensor.ipynb        # text -> notebook

Text format: each cell starts with a header line `%% <kind> [key=value ...]`, where kind is
  md              a markdown cell
  code            an ordinary code cell
  solution        a code cell with an nbgrader solution region (needs id=<grade_id>)
  test            a locked, graded test cell (needs id=<grade_id> and points=<n>)
A header may carry `cellid=<id>` to keep the notebook's cell id stable across round trips.
"""
import hashlib, json, re, sys
from pathlib import Path

HEADER = re.compile(r'^%% (md|code|solution|test)((?: \S+=\S+)*)\s*$')


def _nbgrader(kind, opts):
    if kind == 'solution':
        return dict(grade=False, grade_id=opts['id'], locked=False, schema_version=3, solution=True, task=False)
    if kind == 'test':
        return dict(grade=True, grade_id=opts['id'], locked=True, points=int(opts['points']), schema_version=3,
                    solution=False, task=False)
    return None


def text_to_nb(text, name):
    cells, cur = [], None
    for line in text.splitlines():
        m = HEADER.match(line)
        if m:
            cur = dict(kind=m.group(1), opts=dict(kv.split('=', 1) for kv in m.group(2).split()), lines=[])
            cells.append(cur)
        elif cur is not None:
            cur['lines'].append(line)
    out, seen = [], set()
    for i, c in enumerate(cells):
        src = '\n'.join(c['lines']).strip('\n')
        cid = c['opts'].get('cellid') or hashlib.sha1(f'{name}:{c["opts"].get("id", i)}'.encode()).hexdigest()[:8]
        assert cid not in seen, f'duplicate cell id {cid}'
        seen.add(cid)
        meta = {}
        nbg = _nbgrader(c['kind'], c['opts'])
        if nbg: meta['nbgrader'] = nbg
        if c['kind'] in ('solution', 'test'):
            meta.update(deletable=False, editable=c['kind'] == 'solution')
        lines = src.splitlines(keepends=True)
        if c['kind'] == 'md':
            out.append(dict(cell_type='markdown', id=cid, metadata=meta, source=lines))
        else:
            out.append(dict(cell_type='code', execution_count=None, id=cid, metadata=meta, outputs=[], source=lines))
    return dict(cells=out, metadata=dict(kernelspec=dict(display_name='python3', language='python', name='python3')),
                nbformat=4, nbformat_minor=5)


def nb_to_text(nb):
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        g = c.get('metadata', {}).get('nbgrader', {})
        if c['cell_type'] == 'markdown': head = 'md'
        elif g.get('grade'): head = f'test id={g["grade_id"]} points={g["points"]}'
        elif g.get('solution'): head = f'solution id={g["grade_id"]}'
        else: head = 'code'
        parts.append(f'%% {head} cellid={c["id"]}\n{src}\n')
    return '\n'.join(parts)


if __name__ == '__main__':
    cmd, *args = sys.argv[1:]
    if cmd == 'totext':
        sys.stdout.write(nb_to_text(json.loads(Path(args[0]).read_text())))
    elif cmd == 'tonb':
        src, dst = map(Path, args)
        nb = text_to_nb(src.read_text(), dst.stem)
        dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    else:
        sys.exit(__doc__)
