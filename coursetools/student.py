"""The `tinytorch` command of the student kit.

    tinytorch check 00 [--json]  run nbs/00_*.ipynb in a fresh kernel (your file is not changed) and report every
                                 exercise: passed, failed (and why), todo, or blocked (by an earlier exercise)
    tinytorch export [--json]    export your notebooks into your tinytorch package (nbdev-export)

Runs inside the kit (the folder with pyproject.toml and nbs/). Needs nbclient and nbdev, never nbgrader.

How `check` decides. Each graded cell's id names what it checks (`test_NN_K_...`: Exercise NN.K; `test_NN_...`:
the module as a whole). A `NotImplementedError("Exercise NN.K: ...")` is the stub of exercise NN.K wherever it is
raised: in a test, in a given cell, in the student's package. An error in one cell reaches the cells that use the
names it should have bound (a NameError three cells later, a half-trained model): the names are followed from
cell to cell, so a test is traced to the stub that stopped an earlier cell. Then an exercise is

- *passed*: its graded cells pass;
- *todo*: its stub is still in its solution cell (never "failed"), or its own stub is what its test ran into;
- *blocked*: its tests ran into the stub of another exercise (named, with what to do: solve it, and for an
  earlier module `tinytorch export`);
- *failed*: anything else, with the message (`test_eq`/`test_close` say which value is yours and which was
  expected) and the line of the student's code where the error was raised.
"""
import argparse
import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .notebooks import (STUB, course_notebooks, exercise_titles, graded_cells, load, module_name, nbgrader_meta,
                        source)

NOT_RUN = 'NotRun'
STATUSES = ('passed', 'failed', 'todo', 'blocked')
_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
_RAISED = re.compile(r'^\s*Exercise (\d\d\.\d+)')                          # a NotImplementedError's message
_RAISED_INSIDE = re.compile(r'NotImplementedError\W{1,3}Exercise (\d\d\.\d+)')  # ... quoted in another message
_RAISED_LINE = re.compile(r'^NotImplementedError: Exercise (\d\d\.\d+)', re.MULTILINE)  # ... chained, in a traceback
_CELL_FRAME = re.compile(r'^Cell In\[(\d+)\], line (\d+)')
_FILE_FRAME = re.compile(r'^File (.+?):(\d+), in (\S+?)\(')

# Run in the check's kernel before the notebook (coursetools/check_kernel.py, shipped in the kit): fastcore's
# test helpers keep their comparisons and say which value is the student's and which the expected one.
MESSAGES = "__import__('coursetools.check_kernel').check_kernel.install()"


def find_root(start=None) -> Path:
    "The kit (or course repository) containing `start`: the nearest folder with nbs/ and an nbdev pyproject.toml."
    p = Path(start or Path.cwd()).resolve()
    for d in [p, *p.parents]:
        f = d / 'pyproject.toml'
        if f.exists() and '[tool.nbdev]' in f.read_text(encoding='utf-8') and (d / 'nbs').is_dir():
            return d
    raise SystemExit(f'tinytorch: no course folder here ({p}): run this inside your tinytorch folder '
                     '(the one with pyproject.toml and nbs/)')


def find_notebook(root: Path, name: str) -> Path:
    "`00`, `00_tensor`, `tensor`, `00_tensor.ipynb` or a path -> the notebook."
    p = Path(name)
    if p.suffix == '.ipynb' and p.exists():
        return p.resolve()
    stem = p.stem if p.suffix == '.ipynb' else name
    notebooks = course_notebooks(root / 'nbs')
    for nb in notebooks:
        if stem in (nb.stem, nb.stem[:2], nb.stem[3:]):
            return nb
    names = ', '.join(nb.stem for nb in notebooks)
    raise SystemExit(f'tinytorch: no notebook {name!r} in {root / "nbs"} (there are: {names})')


def _kernel_env() -> dict:
    env = dict(os.environ, IN_TEST='1')     # IN_TEST: the notebook's last cell does not export during a check
    env.setdefault('MPLBACKEND', 'Agg')
    return env


def execute(path: Path, timeout: int = 300, messages: bool = True):
    """Run a notebook in a fresh kernel, errors allowed, `timeout` seconds per cell. Returns (nb, problem):
    the executed notebook (code cells that never ran get a `NotRun` error) and what stopped it early, or None.
    `messages`: first make fastcore's test helpers say which value is yours and which expected (MESSAGES)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=True,
                            interrupt_on_timeout=True, raise_on_iopub_timeout=False,
                            error_on_timeout={'ename': 'CellTimeoutError', 'evalue': f'no result after {timeout} s',
                                              'traceback': [f'CellTimeoutError: no result after {timeout} s']},
                            resources={'metadata': {'path': str(path.parent)}})
    problem, ran = None, set()
    with client.setup_kernel(env=_kernel_env(), stderr=subprocess.DEVNULL):
        if messages:
            client.execute_cell(nbformat.v4.new_code_cell(MESSAGES), 0, store_history=False)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != 'code':
                continue
            try:
                client.execute_cell(cell, index)
                ran.add(index)
            except (DeadKernelError, CellTimeoutError) as e:
                problem = f'the kernel died in {cell_name(nb, index)} ({type(e).__name__}): later cells did not run'
                cell.setdefault('outputs', []).append(nbformat.v4.new_output(
                    'error', ename='KernelDied', evalue=problem, traceback=[]))
                ran.add(index)
                break
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == 'code' and index not in ran and cell.source.strip():
            cell.outputs = [nbformat.v4.new_output('error', ename=NOT_RUN, evalue=problem or 'not run', traceback=[])]
    return nb, problem


# ---------------------------------------------------------------------------------------------- reading cells

def first_line(cell, n: int = 60) -> str:
    "The cell's first line, past nbdev's `#|` directives (`#| export`) unless that is all there is."
    lines = [l.strip() for l in source(cell).splitlines() if l.strip()]
    line = next((l for l in lines if not l.startswith('#|')), lines[0] if lines else '')
    return line if len(line) <= n else line[:n - 3] + '...'


def cell_name(nb, index: int) -> str:
    "A cell as JupyterLab shows it: 1-based, counting every cell, and its first line."
    return f'cell {index + 1} (`{first_line(nb["cells"][index])}`)'


def _first_error(cell):
    "The cell's first error as {'ename', 'evalue', 'traceback'}, ename 'stderr' when it only wrote to stderr, or None."
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'error':
            return {'ename': o.get('ename', ''), 'evalue': _ANSI.sub('', o.get('evalue', '')),
                    'traceback': [_ANSI.sub('', t) for t in o.get('traceback', [])]}
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream' and o.get('name') == 'stderr':
            return {'ename': 'stderr', 'evalue': _ANSI.sub('', o.get('text', '')), 'traceback': []}
    return None


def stub_raised(err) -> str:
    "The exercise whose stub raised this error ('03.1'), wherever it was raised, or None."
    if err is None:
        return None
    if err['ename'] == 'NotImplementedError':
        m = _RAISED.match(err['evalue'])
        if m:
            return m.group(1)
    m = _RAISED_INSIDE.search(err['evalue']) or _RAISED_LINE.search('\n'.join(err['traceback']))
    return m.group(1) if m else None


def _short(text: str, n: int = 1200) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n] + ' ...'


def _parse(src: str):
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        src = TransformerManager().transform_cell(src)
    except Exception:
        pass
    try:
        return ast.parse(src)
    except (SyntaxError, ValueError):
        return None


def statements(src: str) -> list:
    """The cell's top-level statements as (first line, last line, bound, used, changed, imported): the names each
    binds, reads (also inside the functions it defines), changes in place (`x.a = ...`, `x[i] = ...`, a statement
    `x.f(...)`) and imports. None if the cell does not parse."""
    tree = _parse(src)
    if tree is None:
        return None
    out = []
    for stmt in tree.body:
        bound, used, changed, imported = set(), set(), set(), set()

        def visit(node, top):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if top:
                    bound.add(node.name)
                for child in ast.iter_child_nodes(node):
                    visit(child, False)
                return
            if isinstance(node, ast.Lambda):
                visit(node.body, False)
                return
            if isinstance(node, ast.Name):
                if isinstance(node.ctx, ast.Load):
                    used.add(node.id)
                elif top:
                    bound.add(node.id)
            elif isinstance(node, ast.alias) and top:
                name = (node.asname or node.name).split('.')[0]
                if name != '*':
                    bound.add(name)
                    imported.add(name)
            elif isinstance(node, (ast.Attribute, ast.Subscript)) and not isinstance(node.ctx, ast.Load):
                root = node.value
                while isinstance(root, (ast.Attribute, ast.Subscript)):
                    root = root.value
                if isinstance(root, ast.Name):
                    changed.add(root.id)
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and \
                    isinstance(node.value.func, ast.Attribute):      # a method called for its effect: opt.step()
                root = node.value.func.value
                while isinstance(root, (ast.Attribute, ast.Subscript)):
                    root = root.value
                if isinstance(root, ast.Name):
                    changed.add(root.id)
            for child in ast.iter_child_nodes(node):
                visit(child, top)

        visit(stmt, True)
        out.append((stmt.lineno, getattr(stmt, 'end_lineno', stmt.lineno), bound, used, changed, imported))
    return out


def frames(err) -> list:
    "The frames of an error's traceback, outermost first: ('cell', execution count, line) or ('file', path, line, fn)."
    found = []
    for entry in err['traceback'] if err else []:
        entry = entry.strip()
        m = _CELL_FRAME.match(entry)
        if m:
            found.append(('cell', int(m.group(1)), int(m.group(2))))
            continue
        m = _FILE_FRAME.match(entry)
        if m:
            found.append(('file', m.group(1), int(m.group(2)), m.group(3)))
    return found


# ---------------------------------------------------------------------------------------------- the report

class _Notebook:
    "An executed student notebook, read for the report."

    def __init__(self, nb, root: Path = None):
        self.nb, self.root = nb, Path(root) if root else None
        self.cells = nb['cells']
        self.by_count = {c.get('execution_count'): i for i, c in enumerate(self.cells)
                         if c['cell_type'] == 'code' and c.get('execution_count') is not None}
        self.titles = exercise_titles(nb)
        self.solutions = {}                  # exercise -> indices of its solution cells
        current = None
        from .notebooks import EXERCISE
        for i, c in enumerate(self.cells):
            if c['cell_type'] == 'markdown':
                for m in EXERCISE.finditer(source(c)):
                    current = m.group(1)
            elif nbgrader_meta(c).get('solution') and current:
                self.solutions.setdefault(current, []).append(i)

    def section(self, index) -> str:
        "The heading of the section that cell `index` is in ('' before the first)."
        for c in reversed(self.cells[:index]):
            if c['cell_type'] == 'markdown':
                found = re.findall(r'^#{1,4} (.+?)\s*$', source(c), re.MULTILINE)
                if found:
                    return found[-1]
        return ''

    def is_student_code(self, index) -> bool:
        "A solution cell, or a cell the student added (no nbgrader metadata)."
        c = self.cells[index]
        return c['cell_type'] == 'code' and (nbgrader_meta(c).get('solution') or not nbgrader_meta(c))

    def stub_cells(self, exercise) -> list:
        "The solution cells of `exercise` that still hold its stub."
        pattern = re.compile(r'raise NotImplementedError\(["\']Exercise ' + re.escape(exercise) + r'\b')
        return [i for i in self.solutions.get(exercise, []) if pattern.search(source(self.cells[i]))]

    def where(self, err, index=None) -> dict:
        """Where an error was raised in the student's code: the deepest frame in a solution cell, a cell of the
        student's own, or their tinytorch package; else the line of the cell `index` it was raised in. Or None."""
        pkg = (self.root / 'tinytorch').resolve() if self.root else None
        found = None
        for f in frames(err):
            if f[0] == 'cell':
                i = self.by_count.get(f[1])
                if i is not None and (self.is_student_code(i) or (found is None and i == index)):
                    lines = source(self.cells[i]).splitlines()
                    found = {'cell': i + 1, 'line': f[2], 'yours': bool(self.is_student_code(i)),
                             'code': lines[f[2] - 1].strip() if 0 < f[2] <= len(lines) else ''}
            elif pkg is not None:
                p = Path(f[1])
                try:
                    rel = p.resolve().relative_to(pkg.parent)
                except (ValueError, OSError):
                    continue
                if rel.parts[0] != 'tinytorch':
                    continue
                try:
                    lines = p.read_text(encoding='utf-8').splitlines()
                except OSError:
                    lines = []
                found = {'file': str(rel), 'line': f[2], 'function': f[3], 'yours': True,
                         'code': lines[f[2] - 1].strip() if 0 < f[2] <= len(lines) else ''}
        return found

    def error_line(self, index, err):
        "The line of cell `index` where its error was raised (its own frame), or None."
        count = self.cells[index].get('execution_count')
        for f in frames(err):
            if f[0] == 'cell' and f[1] == count:
                return f[2]
        return None

    def trace(self) -> dict:
        """Follow errors through the notebook: {cell index: set of causes} for every code cell that errored or used
        what an errored cell should have made. A cause is an exercise id ('03.1', its stub raised) or a cell index
        (int: a real error there). A graded test that fails spoils only the names it never got to bind: what it
        checked is reported by the test itself."""
        taint, causes, modules = {}, {}, set()
        for i, c in enumerate(self.cells):
            if c['cell_type'] != 'code':
                continue
            err = _first_error(c)
            if err is not None and err['ename'] == 'stderr':
                err = None
            test = bool(nbgrader_meta(c).get('grade'))
            stmts = statements(source(c))
            own = set()
            if err is not None:
                stub = stub_raised(err)
                own = {stub} if stub else {i}
            if stmts is None:                     # does not parse: whatever it should have bound is missing
                causes[i] = own
                continue
            line = self.error_line(i, err) if err else None
            inherited = set()
            for first, last, bound, used, changed, imported in stmts:
                if err is not None and line is not None and first > line:
                    stmt_causes = own | inherited  # never ran
                else:
                    got = set().union(*(taint.get(n, set()) for n in used)) if used else set()
                    inherited |= got
                    failed_here = err is not None and (line is None or first <= line <= last) and not test
                    stmt_causes = got | (own if failed_here else set())
                modules |= imported
                for n in bound:
                    if stmt_causes:
                        taint[n] = set(stmt_causes)
                    else:
                        taint.pop(n, None)
                if stmt_causes:
                    for n in changed - modules:
                        taint[n] = taint.get(n, set()) | stmt_causes
            if err is not None:
                if own == {i} and inherited:      # a real error, but after using what an earlier error spoiled
                    own = set()
                causes[i] = own | inherited
            elif inherited:
                causes[i] = inherited
        return causes


def _exercise_key(ex: str):
    return tuple(int(x) for x in ex.split('.'))


def classify(nb, module_prefix: str, root=None, catalogue=None) -> dict:
    """The report of an executed student notebook: one record per exercise (passed / failed / todo / blocked, its
    points, what blocks it, the message), one per check of the module as a whole, and the errors of other cells
    that no test explains. `catalogue`: {exercise: {'title', 'notebook', 'stub_in_notebook'}} of the other
    modules (names what blocks an exercise; see `catalogue`)."""
    book = _Notebook(nb, root)
    causes = book.trace()
    catalogue = dict(catalogue or {})
    for ex, title in book.titles.items():
        catalogue[ex] = {'title': title, 'notebook': None, 'stub_in_notebook': bool(book.stub_cells(ex))}
    tests = []
    for g in graded_cells(nb):
        i = g['index']
        cell = book.cells[i]
        err = _first_error(cell)
        t = {'grade_id': g['grade_id'], 'cell': i + 1, 'exercise': g['exercise'], 'status': 'passed',
             'points': g['points'], 'max_points': g['points'], 'message': '', 'causes': []}
        partial = next((o for o in cell.get('outputs', []) if o.get('output_type') == 'execute_result'), None)
        if err is None and partial is not None:         # nbgrader: a number as the result is partial credit
            try:
                t['points'] = min(max(float(partial['data']['text/plain']), 0.0), g['points'])
            except (KeyError, TypeError, ValueError):
                pass
            if t['points'] < g['points']:
                t['status'] = 'failed'
                t['message'] = f"partial credit: {t['points']:g} of {g['points']:g} points"
        if err is not None:
            t['points'] = 0.0
            t['status'] = 'failed'
            found = causes.get(i, set())
            t['causes'] = sorted((c for c in found if isinstance(c, str)), key=_exercise_key)
            earlier = sorted(c for c in found if isinstance(c, int) and c != i)
            if err['ename'] == NOT_RUN:
                t['message'] = f"not run: {err['evalue']}"
            elif err['ename'] == 'KernelDied':
                t['message'] = err['evalue']
            elif err['ename'] == 'stderr':
                t['message'] = f"it wrote to stderr, and grading counts that as failed: {_short(err['evalue'], 300)}"
            elif earlier and not t['causes']:
                e = _first_error(book.cells[earlier[0]])
                t['message'] = (f"{cell_name(nb, earlier[0])} failed first, and this test uses what it makes: "
                                f"{_short(e['ename'] + ': ' + e['evalue'], 600)}")
                t['where'] = book.where(e, earlier[0])
            else:
                t['message'] = _short(f"{err['ename']}: {err['evalue']}" if err['evalue'] else err['ename'])
                t['where'] = book.where(err, i)
                if err['ename'] in ('ModuleNotFoundError', 'ImportError') and 'tinytorch' in err['evalue']:
                    t['message'] += ' (is your package installed? `pip install -e .` in your tinytorch folder)'
        tests.append(t)

    exercises = []
    for ex, title in book.titles.items():
        own = [t for t in tests if t['exercise'] == ex]
        exercises.append(_verdict({'exercise': ex, 'title': title}, own, book, catalogue, module_prefix))
    checks = []
    for t in tests:
        if t['exercise'] is None:
            checks.append(_verdict({'check': t['grade_id'], 'title': book.section(t['cell'] - 1)},
                                   [t], book, catalogue, module_prefix))
    explained = {c for t in tests for c in causes.get(t['cell'] - 1, set()) if isinstance(c, int)}
    other = []
    for i, c in enumerate(book.cells):
        err = _first_error(c) if c['cell_type'] == 'code' else None
        if err is None or nbgrader_meta(c).get('grade') or err['ename'] in (NOT_RUN, 'stderr'):
            continue
        if causes.get(i) == {i} and i not in explained:
            other.append({'cell': i + 1, 'message': _short(f"{err['ename']}: {err['evalue']}", 600),
                          'where': book.where(err, i), 'name': cell_name(nb, i)})
    records = exercises + checks
    return {'module': module_prefix, 'exercises': exercises, 'module_checks': checks, 'other_errors': other,
            'points': sum(r['points'] for r in records), 'max_points': sum(r['max_points'] for r in records),
            'passed': all(r['status'] == 'passed' for r in records),
            'counts': {s: sum(r['status'] == s for r in exercises) for s in STATUSES}}


def _blocked_message(ex: str, catalogue: dict, book, module_prefix: str) -> str:
    info = catalogue.get(ex, {})
    title = f" ({info['title']})" if info.get('title') else ''
    if ex.split('.')[0] == module_prefix and info.get('notebook') is None:
        at = book.stub_cells(ex)
        where = f' in {cell_name(book.nb, at[0])}' if at else ''
        return f'needs Exercise {ex}{title} first: it is still a stub{where}. Solve it, then check again'
    nb = info.get('notebook') or f'the notebook of module {ex.split(".")[0]}'
    if info.get('stub_in_notebook') is False:
        return (f'needs Exercise {ex}{title}: you solved it in {nb}, but your tinytorch package still has the '
                f'stub. Run `tinytorch export`, then check again')
    return (f'needs Exercise {ex}{title} first: it is still a stub in your tinytorch package. Solve it in {nb}, '
            f'run `tinytorch export`, then check again')


def _verdict(record: dict, tests: list, book, catalogue: dict, module_prefix: str) -> dict:
    "One status for an exercise (or a module check) from its graded cells."
    ex = record.get('exercise')
    failing = [t for t in tests if t['status'] != 'passed']
    blockers = sorted({c for t in failing for c in t['causes'] if c != ex}, key=_exercise_key)
    stubbed = book.stub_cells(ex) if ex else []
    record.update(points=sum(t['points'] for t in tests), max_points=sum(t['max_points'] for t in tests),
                  cell=tests[0]['cell'] if tests else None, blocked_by=None, also_needs=None, message='', where=None)
    if tests and not failing:
        record['status'] = 'passed'
    elif not tests and not stubbed:
        record.update(status='failed', message='no graded cell checks this exercise (was its test cell deleted?)')
    elif stubbed:
        record.update(status='todo', message=f'not done yet: replace the `raise NotImplementedError(...)` line in '
                                             f'{cell_name(book.nb, stubbed[0])} with your code')
        if blockers:
            record['also_needs'] = blockers[0]
            record['message'] += f' (its test also needs Exercise {blockers[0]})'
    elif blockers:
        record.update(status='blocked', blocked_by=blockers[0],
                      message=_blocked_message(blockers[0], catalogue, book, module_prefix))
    elif ex is not None and ex in {c for t in failing for c in t['causes']}:
        record.update(status='todo', message=f'not done yet: your code still raises NotImplementedError("Exercise '
                                             f'{ex} ...")')
        record['where'] = next((t.get('where') for t in failing if t.get('where')), None)
    else:
        first = failing[0]
        record.update(status='failed', message=first['message'], where=first.get('where'), cell=first['cell'])
    record['tests'] = [{k: v for k, v in t.items() if k != 'exercise'} for t in tests]
    order = ('exercise', 'check', 'title', 'status', 'points', 'max_points', 'blocked_by', 'also_needs', 'message',
             'cell', 'where')
    return {**{k: record[k] for k in order if k in record}, **record}


def catalogue(root: Path, exclude: Path = None) -> dict:
    "{exercise: {'title', 'notebook', 'stub_in_notebook'}} for the notebooks of the kit (but `exclude`)."
    found = {}
    for p in course_notebooks(Path(root) / 'nbs'):
        if exclude is not None and p.resolve() == Path(exclude).resolve():
            continue
        try:
            nb = load(p)
        except (OSError, ValueError):
            continue
        book = _Notebook(nb)
        for ex, title in book.titles.items():
            found[ex] = {'title': title, 'notebook': f'nbs/{p.name}', 'stub_in_notebook': bool(book.stub_cells(ex))}
    return found


def _stale_exports(root: Path, notebook: Path) -> list:
    "Lower-numbered notebooks changed since their module was last exported (the package may be out of date)."
    stale = []
    for nb_path in course_notebooks(root / 'nbs'):
        if nb_path.name >= notebook.name:
            break
        mod = module_name(load(nb_path))
        py = root / 'tinytorch' / f'{mod}.py'
        if mod and (not py.exists() or py.stat().st_mtime < nb_path.stat().st_mtime - 1):
            stale.append(nb_path.name)
    return stale


def _where_text(w) -> str:
    if not w:
        return ''
    if 'file' in w:
        return f"{w['file']}, line {w['line']}, in {w['function']}: {w['code']}"
    return f"cell {w['cell']}, line {w['line']}: {w['code']}"


def render(report: dict) -> str:
    "The report as `tinytorch check` prints it."
    name = Path(report.get('notebook', '')).name or f"module {report['module']}"
    c = report['counts']
    lines = [f"{name}: {report['points']:g}/{report['max_points']:g} points on the visible tests "
             f"({c['passed']} passed, {c['failed']} failed, {c['todo']} todo, {c['blocked']} blocked; "
             f"checked in {report.get('seconds', 0):.0f} s)"]

    def entry(label, r):
        lines.append(f"  {r['status']:<8} {label}  [{r['points']:g}/{r['max_points']:g}]")
        if r['status'] == 'passed' and not r['message']:
            return
        if r['status'] == 'failed' and r.get('cell'):
            lines.append(f"           {cell_label(r)}:")
        for line in r['message'].splitlines():
            lines.append(f'           {line}')
        if r.get('where'):
            lines.append(f"           {'your code' if r['where']['yours'] else 'at'}: {_where_text(r['where'])}")

    def cell_label(r):
        t = next((t for t in r['tests'] if t['cell'] == r['cell']), None)
        return f"test {t['grade_id']} in cell {r['cell']}" if t else f"cell {r['cell']}"

    for r in report['exercises']:
        entry(f"Exercise {r['exercise']}: {r['title']}", r)
    if report['module_checks']:
        lines.append(f"  checks of module {report['module']} as a whole (no single exercise):")
        for r in report['module_checks']:
            entry(f"{r['check']} (cell {r['cell']}{', ' + r['title'] if r['title'] else ''})", r)
    for e in report['other_errors']:
        lines.append(f"  error in {e['name']}: {e['message'].splitlines()[0] if e['message'] else ''}")
        if e.get('where') and e['where']['yours']:
            lines.append(f"           your code: {_where_text(e['where'])}")
    lines.append('Grading adds hidden tests of the same exercises.')
    for hint in report.get('hints', []):
        lines.append(f'hint: {hint}')
    return '\n'.join(lines)


def check(name: str, root=None, timeout: int = 300) -> dict:
    "Run a notebook of the kit and report it (see `classify`); with `notebook`, `seconds`, `problem` and `hints`."
    root = find_root(root)
    path = find_notebook(root, name)
    start = time.perf_counter()
    nb, problem = execute(path, timeout=timeout)
    report = classify(nb, path.stem[:2], root=root, catalogue=catalogue(root, exclude=path))
    try:
        shown = str(path.relative_to(root))
    except ValueError:
        shown = str(path)
    report = dict(notebook=shown, seconds=round(time.perf_counter() - start, 2), problem=problem, hints=[], **report)
    stale = _stale_exports(root, path)
    if stale:
        report['hints'].append(f"{', '.join(stale)} changed after your last export: run `tinytorch export` so "
                               'this notebook imports your latest code')
    if problem:
        report['hints'].append(problem)
    nxt = next((r for r in report['exercises'] + report['module_checks'] if r['status'] != 'passed'), None)
    if nxt is not None:
        name = f"Exercise {nxt['exercise']}" if nxt.get('exercise') else nxt['check']
        report['hints'].append(f"next: Exercise {nxt['blocked_by']}, which {name} needs" if nxt['blocked_by']
                               else f"next: {name} ({nxt['status']})")
    return report


def export(root=None) -> dict:
    "Export every notebook of the kit into its tinytorch package; check that each module compiles."
    root = find_root(root)
    os.environ.pop('IN_TEST', None)         # nbdev_export does nothing when IN_TEST is set
    from nbdev.doclinks import nbdev_export
    cwd = os.getcwd()
    os.chdir(root)
    try:
        nbdev_export()
    finally:
        os.chdir(cwd)
    modules, errors, todo = {}, [], {}
    for nb_path in course_notebooks(root / 'nbs'):
        mod = module_name(load(nb_path))
        if not mod:
            continue
        py = root / 'tinytorch' / f'{mod}.py'
        modules[nb_path.name] = str(py.relative_to(root))
        if not py.exists():
            continue
        text = py.read_text(encoding='utf-8')
        try:
            compile(text, str(py), 'exec')
        except SyntaxError as e:
            errors.append(f'{py.relative_to(root)}, line {e.lineno}: {e.msg} (fix it in nbs/{nb_path.name})')
        stubs = list(dict.fromkeys(f'{a}.{b}' for a, b in STUB.findall(text)))
        if stubs:
            todo[nb_path.name] = stubs
    return {'modules': modules, 'errors': errors, 'todo': todo}


def main(argv=None):
    parser = argparse.ArgumentParser(prog='tinytorch', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    chk = sub.add_parser('check', help='run a notebook and report its exercises')
    chk.add_argument('module', help='00, 00_tensor, tensor or a path to the notebook')
    chk.add_argument('--timeout', type=int, default=300, help='seconds per cell (default 300)')
    chk.add_argument('--json', action='store_true', help='print the report as JSON')
    exp = sub.add_parser('export', help='export your notebooks into your tinytorch package')
    exp.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    if args.command == 'check':
        report = check(args.module, timeout=args.timeout)
        print(json.dumps(report, indent=1) if args.json else render(report))
        return 0 if report['passed'] else 1
    report = export()
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for nb_name, py in report['modules'].items():
            todo = report['todo'].get(nb_name)
            left = f"  (still to do: {', '.join(todo)})" if todo else ''
            print(f'exported nbs/{nb_name} -> {py}{left}')
        for e in report['errors']:
            print(f'error: {e}')
    return 1 if report['errors'] else 0


if __name__ == '__main__':
    sys.exit(main())
