"""nbgrader plug-ins of a tinytorch course directory (course/nbgrader_config.py lists them).

Generating an assignment: `LockGivenCells` locks every given code cell, `ExerciseStubs` names the exercise in each
stub (both from coursetools.release, shared with the student kit).

Autograding a submission, in nbgrader's two passes:

- sanitizing (`SANITIZE`): `Restructure` puts the submission back into the course's shape before nbgrader's
  `OverwriteCells` restores the locked cells' text: cells in the course's order, deleted locked cells and solution
  cells re-inserted, and every change a grader should know about recorded as a *flag* (edited or deleted locked
  cells, reordered cells, cells that redefine or patch the test helpers);
- executing (`AUTOGRADE`): `GradingExecute` runs the notebook in a kernel whose environment cannot see a student's
  package (no PYTHONPATH: `tinytorch` is the reference package, so module N is graded on its own; in the sandbox
  the reference code of module N and of the later ones is withheld, coursetools/sandbox.py), with a per-cell
  timeout, guard cells that restore the test helpers before each graded cell (coursetools/guard.py), and a
  kernel that dies (`os._exit`, a crash) or hangs failing the rest of the notebook instead of the whole batch;
  `LimitOutputSize` caps huge outputs; `RecordFlags` writes the flags into the notebook (metadata and a note
  at the top, which the formgrader and the feedback show).

Feedback (`FEEDBACK`): `HideHiddenTests` keeps the hidden tests' code and tracebacks out of the HTML a student
gets back (they are reused every term); results and messages stay.
"""
import ast
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_output
from traitlets import Bool, Float, Integer, Unicode

from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearHiddenTests, ClearMarkScheme,
                                    ClearOutput, ComputeChecksums, DeduplicateIds, Execute, GetGrades,
                                    IgnorePattern, IncludeHeaderFooter, InstantiateTests, LimitOutput, LockCells,
                                    NbGraderPreprocessor, OverwriteCells, OverwriteKernelspec, SaveAutoGrades,
                                    SaveCells)


from . import sandbox
from .guard import AUDIT_FD, END
from .notebooks import module_name, parse_cell
from .release import ExerciseStubs, LockGivenCells, strip_locked_marker

META = 'tinytorch'                      # notebook metadata: what the grader found
NOT_RUN = 'NotRun'
# Modules and objects whose attributes a student's cell has no business setting.
PATCH_ROOTS = {'builtins', '__builtins__', 'fastcore', 'numpy', 'np', 'math', 'sys', 'importlib', 'IPython',
               'coursetools', 'unittest', 'pytest', 'nbgrader'}
_HIDDEN_REGION = re.compile(r'^([ \t]*)### BEGIN HIDDEN TESTS[^\n]*\n.*?^[ \t]*### END HIDDEN TESTS[^\n]*\n?',
                            re.MULTILINE | re.DOTALL)


def flags(nb) -> list:
    return nb.metadata.setdefault(META, {}).setdefault('flags', [])


def add_flag(nb, text: str):
    found = flags(nb)
    if text not in found:
        found.append(text)


def _is(cell, kind) -> bool:
    return bool(cell.get('metadata', {}).get('nbgrader', {}).get(kind))


def _gid(cell):
    return cell.get('metadata', {}).get('nbgrader', {}).get('grade_id')


def _is_given(cell) -> bool:
    "A locked code cell of the course that is neither a solution nor a test."
    return cell.cell_type == 'code' and _is(cell, 'locked') and not _is(cell, 'grade') and not _is(cell, 'solution')


def describe(cells, index) -> str:
    "A cell as an instructor can find it: its grade_id, or the student's cell after the nearest course cell."
    cell = cells[index]
    if _gid(cell):
        return f'`{_gid(cell)}`'
    first = next((l.strip() for l in cell.get('source', '').splitlines() if l.strip()), '')
    first = first if len(first) <= 40 else first[:37] + '...'
    before = next((_gid(c) for c in reversed(cells[:index]) if _gid(c)), None)
    where = f'after `{before}`' if before else 'at the top'
    return f'the cell {where} (`{first}`)'


# ---------------------------------------------------------------------------------------------- reading code

def _target_names(node) -> set:
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, (ast.Tuple, ast.List)):
        return set().union(*(_target_names(e) for e in node.elts)) if node.elts else set()
    if isinstance(node, ast.Starred):
        return _target_names(node.value)
    return set()


def bindings(src: str, kinds=('import', 'def', 'assign')) -> set:
    "Names a cell binds at module level: imports, def/class, assignments (also inside if/for/with/try)."
    tree = parse_cell(src)
    names = set()
    if tree is None:
        return names

    def visit(stmts):
        for s in stmts:
            if isinstance(s, (ast.Import, ast.ImportFrom)) and 'import' in kinds:
                for a in s.names:
                    if a.name != '*':
                        names.add(a.asname or a.name.split('.')[0])
            elif isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and 'def' in kinds:
                names.add(s.name)
            elif 'assign' in kinds and isinstance(s, ast.Assign):
                for t in s.targets:
                    names.update(_target_names(t))
            elif 'assign' in kinds and isinstance(s, (ast.AnnAssign, ast.AugAssign)):
                names.update(_target_names(s.target))
            elif 'assign' in kinds and isinstance(s, (ast.For, ast.AsyncFor)):
                names.update(_target_names(s.target))
            elif 'assign' in kinds and isinstance(s, (ast.With, ast.AsyncWith)):
                for item in s.items:
                    if item.optional_vars is not None:
                        names.update(_target_names(item.optional_vars))
            for field in ('body', 'orelse', 'finalbody'):
                if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    visit(getattr(s, field, []) or [])
            for h in getattr(s, 'handlers', []) or []:
                visit(h.body)
    visit(tree.body)
    return names


def _root(node):
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def imports(src: str) -> dict:
    "{name: what it is imported as}: `import numpy as np` -> {'np': 'numpy'}; `from a import b` -> {'b': 'a.b'}."
    tree = parse_cell(src)
    found = {}
    for node in ast.walk(tree) if tree else []:
        if isinstance(node, ast.Import):
            for a in node.names:
                found[a.asname or a.name.split('.')[0]] = a.name if a.asname else a.name.split('.')[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                found[a.asname or a.name] = f'{node.module}.{a.name}'
    return found


def scan_cell(src: str, helpers: set, patchable: set, course_imports=None) -> list:
    """What a student's cell does to the tests' machinery: rebinding a course helper (importing the same thing
    again is fine), patching a module or a helper, hooking into IPython, exec/eval. Returns short descriptions
    (empty: nothing suspicious)."""
    tree = parse_cell(src)
    if tree is None:
        return []
    found = []
    same = {n for n, what in imports(src).items() if (course_imports or {}).get(n) == what}
    rebound = (bindings(src) & helpers) - same
    found += [f'redefines `{n}`, which the course defines' for n in sorted(rebound)]
    roots = patchable | helpers
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            if isinstance(t, (ast.Attribute, ast.Subscript)):
                r = _root(t)
                if r in roots:
                    found.append(f'patches `{r}` ({ast.unparse(t)[:60]})')
                elif r == 'globals' or (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Call)
                                        and _root(t.value.func) in ('globals', 'vars', 'locals')):
                    found.append('writes into globals()')
            elif isinstance(node, ast.Delete) and isinstance(t, ast.Name) and t.id in helpers:
                found.append(f'deletes `{t.id}`, which the course defines')
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else None
            builtin = isinstance(fn, ast.Name) or _root(fn) in ('builtins', '__builtins__')
            if name in ('setattr', 'delattr') and builtin and node.args and _root(node.args[0]) in roots:
                found.append(f'patches `{_root(node.args[0])}` with {name}()')
            elif name in ('exec', 'eval') and builtin:               # not model.eval()
                found.append(f'calls {name}()')
            elif name in ('settrace', 'setprofile') and _root(fn) == 'sys':
                found.append(f'calls sys.{name}()')
            elif name == 'update' and isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Call) \
                    and _root(fn.value.func) in ('globals', 'vars'):
                found.append('writes into globals()')
        if isinstance(node, ast.Attribute) and node.attr in ('input_transformers_cleanup', 'input_transformers_post',
                                                              'ast_transformers', 'events', 'register_magic_function'):
            found.append(f'changes how IPython runs cells (.{node.attr})')
    return list(dict.fromkeys(found))


def protection(release_nb, source_nb) -> dict:
    """What the guard keeps, computed from the course's notebooks (never from the submission):
    `capture`: for each locked given cell, the names it binds that no solution or test cell binds;
    `helpers`: those of them that are imports, functions or classes (a student's cell rebinding one is flagged);
    `patchable`: module names the given cells import, plus PATCH_ROOTS."""
    excluded = set()
    for c in release_nb.cells:
        if c.cell_type == 'code' and _is(c, 'solution'):
            excluded |= bindings(c.source)
    for c in source_nb.cells:
        if c.cell_type == 'code' and (_is(c, 'grade') or _is(c, 'solution')):
            excluded |= bindings(c.source)
    capture, helpers, modules, imported = {}, set(), set(), {}
    for c in release_nb.cells:
        if _is_given(c):
            names = bindings(c.source) - excluded
            if names:
                capture[_gid(c)] = sorted(names)
            helpers |= bindings(c.source, kinds=('import', 'def')) - excluded
            imported.update(imports(c.source))
            tree = parse_cell(c.source)
            for node in ast.walk(tree) if tree else []:
                if isinstance(node, ast.Import):
                    modules.update(a.asname or a.name.split('.')[0] for a in node.names)
    return {'capture': capture, 'helpers': sorted(helpers), 'patchable': sorted(modules | PATCH_ROOTS),
            'imports': imported, 'module': module_name(source_nb)}


# ---------------------------------------------------------------------------------------------- sanitizing

def _key(cell, release_keys, by_id):
    """The release cell a submitted cell stands for: same grade_id; or, for a cell without nbgrader metadata
    (stripped by some tool), the same cell id."""
    gid = _gid(cell)
    if gid is not None:
        return ('g', gid) if ('g', gid) in release_keys else None
    return by_id.get(cell.get('id'))


def _norm(text: str) -> str:
    return '\n'.join(line.rstrip() for line in text.replace('\r\n', '\n').strip().splitlines())


def _same_code(submitted: str, released: str) -> bool:
    """Whether a locked cell came back unchanged, white space at line ends and the `(read-only)` first line aside
    (a kit made before the markers existed has none)."""
    return _norm(strip_locked_marker(submitted)) == _norm(strip_locked_marker(released))


def restructure(nb, release_nb, source_nb, plan=None):
    """Put a submitted notebook (nbformat node, changed in place) into the course's shape; record flags.
    Returns the notebook."""
    nb.metadata[META] = {'flags': []}
    rkeys = {}
    for c in release_nb.cells:
        k = ('g', _gid(c)) if _gid(c) is not None else ('c', c.get('id')) if c.get('id') else None
        if k is not None:
            rkeys[k] = c
    order = {k: i for i, k in enumerate(rkeys)}
    by_id = {c.get('id'): k for k, c in rkeys.items() if c.get('id')}
    matched, extras, anchor, seen_order = {}, {None: []}, None, []
    for cell in nb.cells:
        k = _key(cell, rkeys, by_id)
        if k is not None and k not in matched:
            matched[k] = cell
            anchor = k
            seen_order.append(order[k])
            extras.setdefault(k, [])
        else:
            cell.metadata.pop('nbgrader', None)          # a copy of a course cell, or the student's own
            cell.metadata.pop('editable', None)
            cell.metadata.pop('deletable', None)
            extras.setdefault(anchor, []).append(cell)
    if not matched:
        add_flag(nb, "none of the course's cells were found: is this the right notebook?")
    if seen_order != sorted(seen_order):
        add_flag(nb, "cells were moved: graded in the course's order")
    cells = list(extras[None])
    for k, rcell in rkeys.items():
        cell = matched.get(k)
        kind = k[1]
        if cell is None:
            if _is(rcell, 'solution'):
                add_flag(nb, f'the solution cell `{kind}` was deleted: restored as the stub (not attempted)')
            elif _is(rcell, 'locked') or _is(rcell, 'grade'):
                add_flag(nb, f'the locked cell `{kind}` was deleted: restored, graded with the course\'s tests')
            cell = copy.deepcopy(rcell)
            if cell.cell_type == 'code':
                cell.outputs, cell.execution_count = [], None
        else:                                            # nbgrader's metadata as released (some tools strip it)
            for field in ('nbgrader', 'editable', 'deletable'):
                if field in rcell.metadata:
                    cell.metadata[field] = copy.deepcopy(rcell.metadata[field])
        if cell is matched.get(k) and (_is(rcell, 'locked') or _is(rcell, 'grade')) and not _is(rcell, 'solution') and \
                (cell.cell_type != rcell.cell_type or not _same_code(cell.source, rcell.source)):
            add_flag(nb, f'the locked cell `{kind}` was edited: restored, graded with the course\'s tests')
            cell.cell_type = rcell.cell_type
            cell.source = rcell.source
        cells.append(cell)
        cells.extend(extras.get(k, []))
    ids = set()
    for cell in cells:
        if cell.get('id') in ids or not cell.get('id'):
            cell['id'] = nbformat.v4.new_code_cell().id
        ids.add(cell['id'])
        if cell.cell_type == 'code':
            cell.setdefault('outputs', [])
            cell.setdefault('execution_count', None)
        else:
            cell.pop('outputs', None)
            cell.pop('execution_count', None)
    nb.cells = cells
    plan = plan or protection(release_nb, source_nb)
    nb.metadata[META]['protect'] = copy.deepcopy(plan)
    helpers, patchable = set(plan['helpers']), set(plan['patchable'])
    for i, cell in enumerate(nb.cells):
        student = cell.cell_type == 'code' and (not cell.metadata.get('nbgrader') or _is(cell, 'solution'))
        if student:
            what = f'the solution cell `{_gid(cell)}`' if _is(cell, 'solution') else describe(nb.cells, i)
            for finding in scan_cell(cell.source, helpers, patchable, plan.get('imports')):
                add_flag(nb, f'{what} {finding}: neutralised before each test')
    return nb


class Restructure(NbGraderPreprocessor):
    """Sanitizing step before nbgrader's OverwriteCells: the submission in the course's order, missing course
    cells re-inserted, flags for everything changed (see `restructure`)."""
    course_root = Unicode('', help='the course directory (release/ and source/ are read from it)').tag(config=True)

    def preprocess(self, nb, resources):
        info = resources['nbgrader']
        root = Path(self.course_root or os.getcwd())
        name = f"{info['notebook']}.ipynb"
        release_nb, source_nb, plan = _course_notebooks(root / 'release' / info['assignment'] / name,
                                                        root / 'source' / info['assignment'] / name)
        nb = restructure(nb, release_nb, source_nb, plan)
        nb.metadata[META]['protect']['notebook'] = info['notebook']   # the sandbox withholds its module, later ones
        return nb, resources


_CACHE = {}


def _course_notebooks(release_path: Path, source_path: Path):
    "The release and source notebooks and their protection plan, read once per process (while unchanged)."
    key = (str(release_path), release_path.stat().st_mtime_ns, str(source_path), source_path.stat().st_mtime_ns)
    if key not in _CACHE:
        release_nb = nbformat.read(release_path, as_version=4)
        source_nb = nbformat.read(source_path, as_version=4)
        _CACHE[key] = (release_nb, source_nb, protection(release_nb, source_nb))
    release_nb, source_nb, plan = _CACHE[key]
    return release_nb, source_nb, plan


# ---------------------------------------------------------------------------------------------- executing

def grading_env(threads: int = 1) -> dict:
    """The kernel's environment when grading: no PYTHONPATH or user site (so `tinytorch` is the reference package
    and a student's own package cannot shadow it), no nbdev export from the notebook's last cell, no bytecode
    written (the packages are read-only in the sandbox: a write there would be flagged), BLAS threads fixed
    (several kernels run at once; results do not depend on the thread count)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'PYTHONHOME', 'PYTHONSTARTUP', 'PYTHONUSERBASE')}
    env.update(IN_TEST='1', PYTHONNOUSERSITE='1', MPLBACKEND='Agg', PYTHONHASHSEED='0', PYTHONDONTWRITEBYTECODE='1',
               OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def sandbox_env(threads: int = 1) -> dict:
    """The kernel's environment in the sandbox: `grading_env`'s settings on a nearly empty environment (the
    grader's variables, tokens included, stay outside)."""
    env = {k: os.environ[k] for k in ('PATH', 'LANG', 'LC_ALL', 'LC_CTYPE', 'TZ') if k in os.environ}
    env['PATH'] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env.update({k: v for k, v in grading_env(threads).items() if k not in os.environ or k in (
        'IN_TEST', 'PYTHONNOUSERSITE', 'MPLBACKEND', 'PYTHONHASHSEED', 'PYTHONDONTWRITEBYTECODE', 'OMP_NUM_THREADS',
        'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')})
    return env


# Names a file or folder next to the notebook must not have: it would be imported instead of the real module
# (the kernel's working directory is first on sys.path).
_MODULE_FILE = re.compile(r'^[A-Za-z_]\w*(\.py|\.pyc|\.pyw|\.so|\.pth|\.[\w-]+\.so)$')


def remove_shadowing(workdir, nb):
    """Take out of the grading folder every Python module or package (nbgrader copies the submission's files and
    the extra files of source/<assignment>/ there): `numpy.py` or a `tinytorch/` would replace the real one."""
    for p in sorted(Path(workdir).iterdir()) if Path(workdir).is_dir() else []:
        package = p.is_dir() and not p.is_symlink() and ((p / '__init__.py').exists() or p.name == 'tinytorch')
        if not (package or _MODULE_FILE.match(p.name) or p.is_symlink()):
            continue
        shutil.rmtree(p) if package else p.unlink()
        if p.name in ('tinytorch', 'tinytorch.py'):
            add_flag(nb, f'the submission folder had its own `{p.name}`: removed, graded on the reference package')
        else:
            add_flag(nb, f'the grading folder held `{p.name}` (it would replace a module the tests import): '
                         'removed before grading')


def audit_flags(records: list, sandboxed: bool, completed: bool, max_processes: int) -> list:
    "Flags from the audit hook's records (coursetools/guard.py): what the submission tried."
    after = ': the sandbox stopped it' if sandboxed else ': graded without a sandbox, it may have succeeded'
    found, seen = [], {}
    for r in records:
        kind = r.get('event') if isinstance(r, dict) else None
        if kind is None:
            seen.setdefault('junk', []).append(r)
        elif kind != END:
            seen.setdefault(kind, []).append(r)

    def listing(items):
        items = list(dict.fromkeys(items))
        more = f' (and {len(items) - 3} more)' if len(items) > 3 else ''
        return ', '.join(f'`{i}`' for i in items[:3]) + more
    if 'open' in seen:
        found.append(f"tried to read outside its folder: {listing(r['path'] for r in seen['open'])}{after}")
    if 'write' in seen:
        found.append(f"tried to write outside its folder: {listing(r['path'] for r in seen['write'])}{after}")
    if 'database' in seen:
        found.append(f"tried to open the database {listing(r['path'] for r in seen['database'])}{after}")
    if 'connect' in seen:
        found.append(f"tried to connect a socket to {listing(r['address'] for r in seen['connect'])}"
                     + (': the sandbox has no network' if sandboxed else after))
    if 'process' in seen:
        hows = {}
        for r in seen['process']:
            hows[r.get('how')] = hows.get(r.get('how'), 0) + 1
        what = ', '.join(f'{k} x{v}' for k, v in hows.items())
        commands = [r['what'] for r in seen['process'] if r.get('what') not in (None, '', "''")]
        what += f': {listing(commands)}' if commands else ''
        found.append(f'started processes ({what})' + (f': at most {max_processes} at once in the sandbox'
                                                      if sandboxed else after))
    if 'withheld' in seen:
        found.append('tried to use the reference solutions, withheld while this module is graded: '
                     f"{listing(str(r.get('module')) + '.' + str(r.get('name')) for r in seen['withheld'])}: "
                     'it got an ImportError')
    if 'sys.addaudithook' in seen:
        found.append('tried to add its own audit hook (which sees the tests\' code): refused')
    known = ('open', 'write', 'database', 'connect', 'process', 'withheld', 'sys.addaudithook')
    if 'junk' in seen or any(k not in known for k in seen):
        found.append("wrote into the grader's audit channel")
    if completed and not any(isinstance(r, dict) and r.get('event') == END for r in records):
        found.append("the grader's audit channel was closed or silenced before the end: later attempts are not "
                     'recorded')
    return found


def _read_records(fd) -> list:
    os.set_blocking(fd, False)
    data = b''
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    records = []
    for line in data.decode('utf-8', errors='replace').splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append(line[:200])
    return records


def _out_of_memory(out) -> bool:
    return out.get('output_type') == 'error' and (out.get('ename') == 'MemoryError' or
                                                  'Cannot allocate memory' in str(out.get('evalue', '')))


def _guard(call: str):
    return new_code_cell(f"__import__('coursetools.guard', fromlist=['_']).{call}",
                         metadata={META: {'guard': True}})


def insert_guards(nb):
    """Guard cells (coursetools/guard.py), from the plan `Restructure` computed: `setup` first; `capture` after
    each run of locked given cells; `restore` before a graded cell when a student's cell (a solution or their
    own) ran since the last restore."""
    plan = nb.metadata.get(META, {}).get('protect')
    if not plan:
        return nb
    cells, pending, dirty = [_guard('setup()')], [], False
    for cell in nb.cells:
        if cell.cell_type != 'code' or not cell.source.strip():
            cells.append(cell)
            continue
        if pending and not _is_given(cell):
            cells.append(_guard(f'capture(globals(), {sorted(set(pending))!r})'))
            pending = []
        if _is(cell, 'grade') and dirty:
            cells.append(_guard('restore(globals())'))
            dirty = False
        cells.append(cell)
        if _is_given(cell):
            pending += plan['capture'].get(_gid(cell), [])
        elif not _is(cell, 'grade'):
            dirty = True
    if pending:
        cells.append(_guard(f'capture(globals(), {sorted(set(pending))!r})'))
    cells.append(_guard('finish()'))
    nb.cells = cells
    return nb


class GradingExecute(Execute):
    """nbgrader's Execute, for grading untrusted notebooks: the kernel runs in the sandbox (coursetools/sandbox.py)
    on a scratch copy of the grading folder, with an isolated environment (`grading_env`), guard cells and an
    audit hook (coursetools/guard.py); a kernel that dies or hangs ends the notebook (the cells after it fail)
    instead of the submission. UNSAFE_NO_SANDBOX=1: no sandbox, every submission flagged."""
    threads = Integer(1, help='BLAS threads of each grading kernel').tag(config=True)
    notebook_timeout = Integer(900, help='seconds for the whole notebook: then the rest is not run (-1: no limit)'
                               ).tag(config=True)
    memory_gb = Float(4, help='virtual memory of a grading kernel (GB): an allocation beyond fails').tag(config=True)
    max_processes = Integer(64, help="processes and threads of a grading kernel's sandbox").tag(config=True)
    no_sandbox = Bool(None, allow_none=True, help='True: no sandbox (every submission flagged); False: the sandbox; '
                      'None: UNSAFE_NO_SANDBOX decides (a Dask task sets it from the coordinator)').tag(config=True)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('shutdown_kernel', 'immediate')    # nothing to save in a grading kernel
        super().__init__(*args, **kwargs)

    def create_kernel_manager(self):
        self.kernel_manager_class = sandbox.SandboxedKernelManager
        km = super().create_kernel_manager()
        for k, v in self._km_settings.items():
            setattr(km, k, v)
        if km.sandbox is not None:
            km.transport, km.ip, km.connection_file = 'ipc', str(km.ipcdir / 'k'), str(km.ipcdir / 'kernel.json')
        return km

    def preprocess(self, nb, resources, km=None):
        insert_guards(nb)
        meta = resources.setdefault('metadata', {})
        workdir = Path(meta.get('path') or '.')
        remove_shadowing(workdir, nb)
        unsafe = sandbox.disabled() if self.no_sandbox is None else bool(self.no_sandbox)
        top = sandbox.scratch()
        read_fd, write_fd = os.pipe()
        box = None if unsafe else sandbox.Sandbox(memory_gb=self.memory_gb, max_processes=self.max_processes)
        if unsafe:
            add_flag(nb, sandbox.UNSAFE_FLAG)
            kernel_dir, env = workdir, grading_env(self.threads)
            env['TMPDIR'] = str(top / 'home')
        else:
            kernel_dir, env = top / 'work', sandbox_env(self.threads)
            plan = nb.metadata.get(META, {}).get('protect') or {}
            # the reference package's solutions of this module and the later ones stay out (sandbox.package_view)
            box.withhold(plan.get('module'), plan.get('notebook'), top / 'withheld')
            shutil.copytree(workdir, kernel_dir, dirs_exist_ok=True, symlinks=True)
            box.prepare(top / 'work', top / 'ipc', top / 'home')
        env.update(sandbox.home_env(top / 'home'))   # a fresh home: caches and history, the same in both modes
        env[AUDIT_FD] = str(write_fd)
        self._km_settings = dict(sandbox=box, workdir=kernel_dir, ipcdir=top / 'ipc', home=top / 'home',
                                 pass_fds=(write_fd,))
        meta['path'] = str(kernel_dir)
        try:
            self._run(nb, resources, km, env)
        finally:
            meta['path'] = str(workdir)
            os.close(write_fd)
            records = _read_records(read_fd)
            os.close(read_fd)
            shutil.rmtree(top, ignore_errors=True)
        for f in audit_flags(records, not unsafe, self._completed, self.max_processes):
            add_flag(self.nb, f)
        for index, cell in enumerate(self.nb.cells):
            if cell.cell_type == 'code' and not cell.metadata.get(META, {}).get('guard') and \
                    any(_out_of_memory(o) for o in cell.get('outputs', [])):
                add_flag(self.nb, f'{describe(self.nb.cells, index)} ran out of memory (a grading kernel may use '
                                  f'{self.memory_gb:g} GB): stopped there, the notebook went on')
        return self.nb, self.resources

    def _run(self, nb, resources, km, env):
        NotebookClient.__init__(self, nb, km)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        self._timed_out = []
        self._completed = False
        ran, failure = set(), None
        try:
            with self.setup_kernel(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
                info = self.wait_for_reply(self.kc.kernel_info())
                self.nb.metadata['language_info'] = info['content']['language_info']
                start = time.monotonic()
                for index, cell in enumerate(self.nb.cells):
                    if 0 <= self.notebook_timeout < time.monotonic() - start and cell.cell_type == 'code':
                        failure = (None, f'the notebook ran longer than {self.notebook_timeout} s in all: '
                                         f'stopped before {describe(self.nb.cells, index)}')
                        break
                    try:
                        self.preprocess_cell(cell, resources, index)
                    except (DeadKernelError, CellTimeoutError) as e:
                        what = ('did not answer after being interrupted' if isinstance(e, CellTimeoutError)
                                else 'died (os._exit, a crash or out of memory)')
                        failure = (index, f'the kernel {what} in {describe(self.nb.cells, index)}')
                        cell.outputs.append(new_output('error', ename='KernelDied', evalue=failure[1] +
                                                       ': the cells after it were not run', traceback=[]))
                        break
                    ran.add(index)
                else:
                    self._completed = True
        except DeadKernelError:
            if failure is None:
                raise
        for index, cell in enumerate(self.nb.cells):
            if cell.cell_type == 'code' and index not in ran and (failure is None or index != failure[0]) \
                    and _is(cell, 'grade'):
                cell.outputs = [new_output('error', ename=NOT_RUN, traceback=[],
                                           evalue=f'not run: {failure[1] if failure else "execution stopped"}')]
        if failure:
            add_flag(self.nb, failure[1] + ': the graded cells after it score 0')
        for index in self._timed_out:
            add_flag(self.nb, f'{describe(self.nb.cells, index)} ran longer than {self.timeout} s: interrupted')
        self.set_widgets_metadata()

    async def _async_handle_timeout(self, timeout, cell=None):
        for i, c in enumerate(self.nb.cells):
            if c is cell:
                self._timed_out.append(i)
        return await super()._async_handle_timeout(timeout, cell)


class RemoveGuards(NbGraderPreprocessor):
    "Take the guard cells out again after execution (a guard that failed is flagged)."

    def preprocess(self, nb, resources):
        kept = []
        for i, cell in enumerate(nb.cells):
            if cell.metadata.get(META, {}).get('guard'):
                errors = [o for o in cell.get('outputs', []) if o.get('output_type') == 'error']
                if errors and errors[0].get('ename') not in (NOT_RUN, 'KernelDied'):
                    nxt = min(i + 1, len(nb.cells) - 1)
                    add_flag(nb, f"the grader's guard failed before {describe(nb.cells, nxt)} "
                                 f"({errors[0].get('ename')}): something changed the kernel itself")
                continue
            kept.append(cell)
        nb.cells = kept
        return nb, resources


class LimitOutputSize(LimitOutput):
    """nbgrader's LimitOutput (lines), plus a cap on the size of every output: `max_chars` for text (one huge line,
    a huge repr), `max_bytes` for anything else (images)."""
    max_chars = Integer(100_000, help='characters kept per text output (-1: no limit)').tag(config=True)
    max_bytes = Integer(5_000_000, help='largest image or other non-text output kept (-1: no limit)').tag(config=True)

    def preprocess(self, nb, resources):
        self._nb = nb
        return super().preprocess(nb, resources)

    def _cut(self, value: str, limit: int):
        if limit < 0 or len(value) <= limit:
            return value, 0
        return value[:limit] + '\n... Output truncated ...\n', len(value)

    def preprocess_cell(self, cell, resources, cell_index):
        cut = 0
        for out in cell.get('outputs', []) if cell.cell_type == 'code' else []:
            if out.get('output_type') == 'stream':
                out.text, n = self._cut(out.get('text', ''), self.max_chars)
                cut += n
            for mime, value in list(out.get('data', {}).items()):
                text = mime.startswith('text/') or mime.endswith(('json', 'javascript'))
                value = value if isinstance(value, str) else json.dumps(value)
                limit = self.max_chars if text else self.max_bytes
                if limit >= 0 and len(value) > limit:
                    cut += len(value)
                    if text:
                        out.data[mime] = self._cut(value, limit)[0]
                    else:
                        del out.data[mime]
        if cut:
            add_flag(self._nb, f'{describe(self._nb.cells, cell_index)} printed {cut / 1e6:.1f} MB of output: truncated')
        return super().preprocess_cell(cell, resources, cell_index)


class RecordFlags(NbGraderPreprocessor):
    "A note at the top of the graded notebook listing the flags (shown in the formgrader and the feedback)."

    def preprocess(self, nb, resources):
        found = flags(nb)
        nb.cells = [c for c in nb.cells if not c.metadata.get(META, {}).get('notes')]
        if found:
            text = '**Grader\'s notes** (this submission was flagged):\n\n' + '\n'.join(f'- {f}' for f in found)
            nb.cells.insert(0, new_markdown_cell(text, metadata={META: {'notes': True}}))
        return nb, resources


def hidden_lines(nb) -> list:
    """The lines of the notebook's hidden tests that a student has not seen: substantial (over 12 characters, not a
    comment) and found nowhere in the course's other cells outside hidden regions (as the release and site leak
    checks count them). Read from the graded notebook itself, whose graded cells hold the hidden tests."""
    hidden, shown = set(), []
    for c in nb.cells:
        if c.cell_type != 'code' or not c.metadata.get('nbgrader') or _is(c, 'solution'):
            continue
        shown.append(_HIDDEN_REGION.sub('', c.source))
        for m in _HIDDEN_REGION.finditer(c.source) if _is(c, 'grade') else []:
            hidden.update(l.strip() for l in m.group(0).splitlines()[1:-1])
    shown = '\n'.join(shown)
    keep = [l for l in hidden if len(l) > 12 and not l.startswith('#') and l not in shown]
    return sorted(keep, key=len, reverse=True)


HIDDEN_MARK = '(hidden)'
_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def scrub_outputs(nb, lines, tracebacks_of_tests=True, count_errors=True) -> dict:
    """Replace every hidden-test line in every output of every cell (streams, rich data, error messages and
    tracebacks) by HIDDEN_MARK; `tracebacks_of_tests=False` leaves the graded cells' own tracebacks (the grader
    sees where a test failed). Returns {cell index: lines replaced} (`count_errors=False`: not counting those
    replaced in error messages and tracebacks)."""
    found = {}

    def scrub(text, index, count=True):
        if not isinstance(text, str):
            return text
        if '\x1b' in text:                # a traceback's syntax colours would split a line: drop them if needed
            plain = _ANSI.sub('', text)
            text = plain if any(line in plain for line in lines) else text
        for line in lines:
            if line in text:
                if count:
                    found[index] = found.get(index, 0) + text.count(line)
                text = text.replace(line, HIDDEN_MARK)
        return text
    if not lines:
        return found
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != 'code':
            continue
        for out in cell.get('outputs', []):
            if 'text' in out:
                out['text'] = scrub(out['text'], index)
            for mime, value in list(out.get('data', {}).items()):
                if isinstance(value, str):
                    out['data'][mime] = scrub(value, index)
                elif isinstance(value, list):
                    out['data'][mime] = [scrub(v, index) for v in value]
                elif not mime.startswith('image/'):                # JSON data: replaced whole
                    text = json.dumps(value, ensure_ascii=False)
                    hits = [line for line in lines if line in text or json.dumps(line)[1:-1] in text]
                    if hits:
                        found[index] = found.get(index, 0) + len(hits)
                        out['data'][mime] = HIDDEN_MARK
            if out.get('output_type') == 'error':
                out['evalue'] = scrub(out.get('evalue', ''), index, count_errors)
                if tracebacks_of_tests or not _is(cell, 'grade'):
                    out['traceback'] = [scrub(t, index, count_errors) for t in out.get('traceback', [])]
    return found


_SECRETS = {}
_GIVEN = {}


def given_secrets(root, lines):
    """Use `lines` as the course's secrets for the course directory `root` (a Dask worker's private course holds
    only the assignment it grades: the coordinator sends the lines of the whole course); None forgets them."""
    if lines is None:
        _GIVEN.pop(str(root), None)
    else:
        _GIVEN[str(root)] = list(lines)


def course_secrets(root) -> list:
    """The solution and hidden-test lines of every assignment in the course directory `root` (source/*/*.ipynb,
    as the release and site leak checks count them): the reference package a grading kernel imports holds every
    module's solutions, and a submission can print them. Read once per process while the notebooks are unchanged."""
    from .notebooks import public_lines, secret_lines
    if root and str(root) in _GIVEN:
        return _GIVEN[str(root)]
    paths = sorted(Path(root, 'source').glob('*/*.ipynb')) if root else []
    key = tuple((str(p), p.stat().st_mtime_ns) for p in paths)
    if key not in _SECRETS:
        nbs = [nbformat.read(p, as_version=4) for p in paths]
        public = set().union(*(public_lines(nb) for nb in nbs)) if nbs else set()
        found = set().union(*(secret_lines(nb, public) for nb in nbs)) if nbs else set()
        _SECRETS.clear()
        _SECRETS[key] = sorted(found, key=len, reverse=True)
    return _SECRETS[key]


class _Scrubbing(NbGraderPreprocessor):
    course_root = Unicode('', help="the course directory (its source/ notebooks' solution lines are scrubbed too; "
                                   "default: Restructure's)").tag(config=True)

    def secrets(self, nb):
        "(hidden-test lines of this notebook, the course's solution lines that are not among them)"
        hidden = hidden_lines(nb)
        root = self.course_root or self.config.get('Restructure', {}).get('course_root', '')
        return hidden, [l for l in course_secrets(root) if l not in set(hidden)]


class ScrubHiddenTests(_Scrubbing):
    """Autograding: no hidden-test line, and no solution line of any module, stays in any output (a submission can
    print what it read, echo the cells run after its own, or print the reference package's source). The
    submission whose output held a hidden-test line, or printed solution lines (outside error tracebacks, which
    show the student's own code), is flagged. The graded cells' own tracebacks are kept for the grader (the
    feedback reduces them, `HideHiddenTests`)."""

    def preprocess(self, nb, resources):
        hidden, solutions = self.secrets(nb)
        for index, n in scrub_outputs(nb, hidden, tracebacks_of_tests=False).items():
            add_flag(nb, f'the output of {describe(nb.cells, index)} held hidden-test lines ({n}): removed')
        for index, n in scrub_outputs(nb, solutions, tracebacks_of_tests=False, count_errors=False).items():
            add_flag(nb, f"the output of {describe(nb.cells, index)} held lines of the course's solutions ({n}): "
                         'removed')
        return nb, resources


class HideHiddenTests(_Scrubbing):
    """Feedback: hidden tests' code replaced by a comment, tracebacks of test cells reduced to their message, and
    every output of every cell scrubbed of hidden-test and solution lines."""

    def preprocess(self, nb, resources):
        hidden, solutions = self.secrets(nb)
        nb, resources = super().preprocess(nb, resources)
        scrub_outputs(nb, hidden + solutions)
        return nb, resources

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type == 'code' and _is(cell, 'grade'):
            cell.source = _HIDDEN_REGION.sub(r'\1# (hidden tests)\n', cell.source)
            for out in cell.get('outputs', []):
                if out.get('output_type') == 'error':
                    out.traceback = [f"{out.get('ename', '')}: {out.get('evalue', '')}"]
        return cell, resources


GENERATE = [IncludeHeaderFooter, InstantiateTests, LockGivenCells, LockCells, ExerciseStubs, ClearOutput,
            CheckCellMetadata, ComputeChecksums, SaveCells, ClearHiddenTests, ClearMarkScheme, ComputeChecksums,
            CheckCellMetadata]
SANITIZE = [ClearOutput, Restructure, DeduplicateIds, OverwriteKernelspec, OverwriteCells, CheckCellMetadata]
AUTOGRADE = [GradingExecute, RemoveGuards, IgnorePattern, ClearMetadataPreprocessor, LimitOutputSize,
             ScrubHiddenTests, RecordFlags, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
FEEDBACK = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
