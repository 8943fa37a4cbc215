"""The docs site, `python -m coursetools docs`: Material for MkDocs renders it; this module does only what is
specific to this course.

1. It executes each *instructor* notebook once, to get its outputs (figures): cached in `_docs_cache/` by a hash
   of the notebook and of the package modules it can import, and run without its `nbdev_export()` cell.
2. It stages the *student version* of each page (`coursetools.release.student_version`: solutions are stubs,
   hidden tests gone) as Markdown in `_docs_build/docs/`: an executed output is grafted onto a student cell only
   if the cell is neither a solution nor a graded cell and its source is the same in both versions, and never an
   error or stderr (a traceback quotes source lines). Exercises become admonitions showing the stub, figures get
   captions (`#| fig-cap:`, else the section they illustrate), and each module page links its student notebook.
   An API page per module is left to mkdocstrings (`::: tinytorch.<module>`, docstrings only, no source).
3. It runs `mkdocs build` (the repository's `mkdocs.yml`, plus the nav in course order: every `nbs/NN_*.ipynb`),
   adds each module page's staged Markdown where the package's module docstrings link it (nbdev writes
   `Docs: <site>/attention.html.md` into `tinytorch/attention.py`; `markdown_twin`), and scans every file of the built site, search index included, for every solution line and hidden test of
   `nbs/` (`find_leaks`): a build that would leak one fails, and the previous site is left in place.
"""
import copy
import hashlib
import html
import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
import yaml
from nbdev.config import nbpath2html

from .notebooks import course_notebooks, exercises, nbgrader_meta, public_lines, secret_lines

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).parent / 'docs_assets'
CACHE_VERSION = '2'   # bump when what is cached (the executed instructor notebook) changes meaning
TEXT_SUFFIXES = {'.html', '.htm', '.css', '.js', '.json', '.ipynb', '.txt', '.md', '.xml', '.svg', '.map'}


class LeakError(RuntimeError):
    "The built site contains a line of a solution or of a hidden test."


def _log(msg):
    print(f'docs: {msg}', file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------- directives
_DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')


def directives(src: str):
    "nbdev/Quarto `#|` directives at the top of a code cell, and the source without them."
    lines, found, i = src.splitlines(), {}, 0
    while i < len(lines) and (_DIRECTIVE.match(lines[i]) or (not lines[i].strip() and found)):
        m = _DIRECTIVE.match(lines[i])
        if m:
            found[m.group(1).replace('-', '_').lower()] = m.group(2)
        i += 1
    return found, '\n'.join(lines[i:]).strip('\n')


def _false(v) -> bool:
    return str(v).strip().lower() in ('false', 'no', '0')


def _default_exp(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == 'code':
            d, _ = directives(cell.source)
            if 'default_exp' in d:
                return d['default_exp'].split()[0]
    return None


# ---------------------------------------------------------------------------------------------------- execution
def _package_digest(root: Path, modules) -> str:
    "Hash of the package files a notebook can use: `__init__.py` and the modules of lower-numbered notebooks."
    h = hashlib.sha256()
    for p in [root / 'tinytorch' / '__init__.py'] + [root / 'tinytorch' / f'{m}.py' for m in sorted(modules)]:
        if p.exists():
            h.update(p.name.encode() + b'\0' + p.read_bytes())
    return h.hexdigest()


def _lower_modules(sources: dict) -> dict:
    "{notebook: the package modules (default_exp) of the notebooks numbered below it}."
    exp = {}
    for p, text in sources.items():
        try:
            exp[p] = _default_exp(nbformat.reads(text, as_version=4))
        except Exception:
            exp[p] = None
    return {p: {m for q, m in exp.items() if m and q.name[:2] < p.name[:2]} for p in sources}


def _cache_file(text: str, stem: str, cache: Path, package: str) -> Path:
    key = hashlib.sha256(CACHE_VERSION.encode() + text.encode() + package.encode()).hexdigest()[:20]
    return cache / f'{stem}-{key}.ipynb'


def _runnable(nb):
    "The notebook to execute: the same cells, with `nbdev_export()` and `#| eval: false` cells emptied."
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == 'code':
            d, _ = directives(cell.source)
            if 'nbdev_export' in cell.source or _false(d.get('eval', 'true')):
                cell.source = ''
    return nb


# One BLAS thread per kernel: notebooks run two at a time, and on a busy 2-core machine BLAS threads only contend
# (module 08 took minutes instead of ~70 s). The Makefile's `demo` does the same.
_ONE_THREAD = {'OMP_NUM_THREADS': '1', 'OPENBLAS_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}


def _execute_one(text: str, folder: str, dest: str, timeout: int):
    "Execute an instructor notebook (its text) in `folder` into `dest`; None, or why it could not run."
    from nbclient import NotebookClient
    try:
        nb = _runnable(nbformat.reads(text, as_version=4))
        NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=True,
                       resources={'metadata': {'path': folder}}
                       ).execute(stderr=subprocess.DEVNULL, env={**os.environ, **_ONE_THREAD})
    except Exception as e:                                # invalid notebook, dead kernel, timeout
        return f'{type(e).__name__}: {str(e)[:300]}'
    dest = Path(dest)
    tmp = dest.with_suffix('.tmp')
    nbformat.write(nb, tmp)
    tmp.replace(dest)
    return None


def _failed_cells(nb) -> list:
    return [i for i, c in enumerate(nb.cells) if c.cell_type == 'code'
            and any(o.get('output_type') == 'error' for o in c.get('outputs', []))]


def execute_notebooks(sources: dict, cache, root, jobs: int = 2, timeout: int = 1800) -> dict:
    """Executed instructor notebooks {path: nb} for `sources` {path: notebook text}, from the cache when the
    notebook and the package are unchanged. A notebook that cannot run is left out (its page has no outputs)."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    lower = _lower_modules(sources)
    dests = {p: _cache_file(text, p.stem, cache, _package_digest(Path(root), lower[p])) for p, text in sources.items()}
    todo = [p for p in sources if not dests[p].exists()]
    if todo:
        _log(f"executing {', '.join(p.name for p in todo)} (cached in {cache}/)")
        args = [(sources[p], str(p.parent), str(dests[p]), timeout) for p in todo]
        if len(todo) == 1 or jobs <= 1:
            failed = [_execute_one(*a) for a in args]
        else:
            with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=multiprocessing.get_context('spawn')) as ex:
                failed = list(ex.map(_execute_one, *zip(*args)))
        for p, why in zip(todo, failed):
            if why:
                _log(f'{p.name}: could not be executed ({why}); its page has no outputs')
            for old in cache.glob(f'{p.stem}-*.ipynb'):      # older versions of this notebook
                if old != dests[p]:
                    old.unlink(missing_ok=True)
    result = {}
    for p in sources:
        if dests[p].exists():
            nb = nbformat.read(dests[p], as_version=4)
            bad = _failed_cells(nb)
            if bad:
                _log(f'{p.name}: cells {bad} raised when executed; their outputs (and those they fed) are missing')
            result[p] = nb
    return result


# ------------------------------------------------------------------------------------------------------- staging
_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
_HEADING = re.compile(r'^#{1,6}\s+(.+?)\s*#*\s*$', re.MULTILINE)


def _fence(code: str, lang: str = 'python', indent: str = '') -> str:
    "A fenced code block that no backtick run inside `code` can close."
    ticks = '`' * max(3, 1 + max((len(m) for m in re.findall(r'`+', code)), default=0))
    body = '\n'.join(indent + line if line else '' for line in code.rstrip('\n').splitlines())
    return f'{indent}{ticks}{lang}\n{body}\n{indent}{ticks}'


def _links(text: str, names: set) -> str:
    "Links to a page of the course (`04_embeddings.ipynb#x`, `instructors.qmd`) as links to its Markdown page."
    def sub(m):
        stem = Path(m.group(2)).stem
        return f'{m.group(1)}{stem}.md{m.group(4) or ""})' if stem in names else m.group(0)
    return re.sub(r'(\]\()([^)#\s]*?([^/)#\s]+)\.(?:ipynb|qmd))(#[^)\s]*)?\)', sub, text)


def _safe_outputs(outputs) -> list:
    "The outputs a student page may show: no errors, no stderr (tracebacks and warnings quote source lines)."
    return [o for o in outputs if (o.get('output_type') == 'stream' and o.get('name') == 'stdout')
            or o.get('output_type') in ('display_data', 'execute_result')]


def _output_md(o, figure) -> str:
    "One output as Markdown; `figure(data, ext)` stores an image and returns its <figure> block."
    if o.get('output_type') == 'stream':
        return _fence(_ANSI.sub('', o.get('text', '')), 'text')
    data = o.get('data', {})
    for mime, ext in (('image/svg+xml', 'svg'), ('image/png', 'png'), ('image/jpeg', 'jpg')):
        if mime in data:
            return figure(data[mime], ext)
    if 'text/markdown' in data:
        return data['text/markdown']
    if 'text/html' in data:
        return f'<div class="output-html" markdown="0">{data["text/html"]}</div>'
    if 'text/plain' in data:
        return _fence(_ANSI.sub('', data['text/plain']), 'text')
    return ''


def stage_notebook(path: Path, executed, text: str, names: set, out: Path) -> dict:
    """The page of `path` (its student version) as Markdown, written to `out/<stem>.md` with its figures and
    (for a module) the student notebook in `out/notebooks/`. Returns {'title', 'figures', 'download', 'module'}."""
    from .release import strip_locked_marker, student_version
    instructor = nbformat.reads(text, as_version=4)
    module = bool(re.match(r'\d\d_', path.name))
    student = student_version(copy.deepcopy(instructor)) if module else copy.deepcopy(instructor)
    if executed is not None and [c.get('id') for c in executed.cells] != [c.get('id') for c in instructor.cells]:
        _log(f'{path.name}: the executed copy does not match the notebook cell for cell; no outputs shown')
        executed = None
    ex_names = exercises(instructor) if module else {}
    stem, title, section, blocks, figures, captioned = path.stem, None, None, [], [], []
    download = None
    if module:
        (out / 'notebooks').mkdir(exist_ok=True)
        nbformat.write(student, out / 'notebooks' / f'{stem}.ipynb')
        download = f'notebooks/{stem}.ipynb'

    def figure(payload, ext, caption):
        import base64
        name = f'{stem}_files/figure-{len(figures) + 1}.{ext}'
        (out / name).parent.mkdir(exist_ok=True)
        if ext == 'svg':
            (out / name).write_text(payload if isinstance(payload, str) else ''.join(payload), encoding='utf-8')
        else:
            (out / name).write_bytes(base64.b64decode(payload))
        figures.append(name)
        captioned.append(bool(caption))
        caption = caption or (f'{section}' if section else title)
        cap = f'Figure {len(figures)}. {caption}'
        return (f'<figure markdown="span">\n  ![{html.escape(cap)}]({name})\n'
                f'  <figcaption markdown="span">{cap}</figcaption>\n</figure>')

    for i, (cell, orig) in enumerate(zip(student.cells, instructor.cells)):
        if cell.cell_type == 'markdown':
            # `$$a$$` and `$$b$$` on adjacent lines are two equations (as in Jupyter), not one from `$$a` to `b$$`
            md = re.sub(r'\$\$[ \t]*\n[ \t]*\$\$', '$$\n\n$$', _links(cell.source, names))
            # a one-line `$$...$$` inside a paragraph or list item is a display equation (as in Jupyter): a block of its own
            md = re.sub(r'^[ \t]*(\$\$[^\n]*\$\$)[ \t]*$', r'\n\1\n', md, flags=re.MULTILINE)
            heads = _HEADING.findall(md)
            if title is None and md.lstrip().startswith('# '):
                title = heads[0]
                blocks.append(md)
                if download:                        # the download button, under the title and its subtitle
                    blocks.append(f'<a class="md-button md-button--primary" href="{download}" download>'
                                  f'Download the student notebook ({stem}.ipynb)</a>')
            else:
                blocks.append(md)
            heads = [h for h in heads if not h.startswith('Exercise ')]   # a figure illustrates a section
            if heads:
                section = re.sub(r'\$([^$]*)\$', r'\1', heads[-1])
            continue
        if cell.cell_type != 'code' or (title is None and not blocks):
            continue                                # setup cells above the title (imports) are not shown
        src = strip_locked_marker(cell.source)      # "(read-only)" first lines are for JupyterLab, not the site
        d, body = directives(src)
        if ({'hide', 'default_exp', 'exporti'} & d.keys() or _false(d.get('include', 'true')) or not body.strip()
                or 'nbdev_export()' in body):
            continue
        meta = nbgrader_meta(orig)
        if not module and (meta.get('solution') or meta.get('grade')):
            continue                                # nbgrader cells outside a module: never shown
        code = body if not _false(d.get('echo', 'true')) else ''
        if meta.get('solution'):
            name = ex_names.get(meta.get('grade_id'), '').replace('"', "'")
            blocks.append(f'!!! example "Exercise {name} (your code replaces the `raise`)"\n\n'
                          + _fence(code, indent='    '))
            continue
        if meta.get('grade'):
            blocks.append(f'!!! success "Graded check ({meta.get("points", 0):g} points; hidden tests are added '
                          f'when grading)"\n\n' + _fence(code, indent='    '))
            continue
        if code:
            blocks.append(_fence(code))
        if executed is not None and src == orig.source and not _false(d.get('output', 'true')):
            cap = d.get('fig_cap', '').strip('"\'')
            for o in _safe_outputs(executed.cells[i].get('outputs', [])):
                blocks.append(_output_md(o, lambda data, ext: figure(data, ext, cap)))
    (out / f'{stem}.md').write_text('\n\n'.join(b for b in blocks if b.strip()) + '\n', encoding='utf-8')
    return dict(name=stem, title=title or stem, figures=len(figures), captioned=sum(captioned), download=download,
                module=module)


def stage_markdown(path: Path, names: set, out: Path, exercise_md: str) -> dict:
    "A `.qmd`/`.md` page: its YAML front matter (title, description) becomes the heading and subtitle."
    text = path.read_text(encoding='utf-8')
    meta = {}
    m = re.match(r'^---\s*\n(.*?)\n---\s*\n', text, re.DOTALL)
    if m:
        meta, text = yaml.safe_load(m.group(1)) or {}, text[m.end():]
    title = meta.get('title') or path.stem
    head = f'# {title}\n\n' + (f'> {meta["description"]}\n\n' if meta.get('description') else '')
    text = _links(text.replace('<!-- exercise-table -->', exercise_md), names)
    (out / f'{path.stem}.md').write_text(head + text, encoding='utf-8')
    return dict(name=path.stem, title=title, figures=0, download=None, module=False)


def exercise_table(nbs) -> str:
    "Markdown table of every module's exercises and the points of their graded cells (for the instructors page)."
    rows = ['| module | exercises | graded cells | points |', '|---|---|---|---|']
    for p in course_notebooks(Path(nbs)):
        try:
            nb = json.loads(p.read_text(encoding='utf-8'))
            ex = list(dict.fromkeys(exercises(nb).values()))
        except Exception:
            continue
        graded = [nbgrader_meta(c) for c in nb['cells'] if nbgrader_meta(c).get('grade')]
        pts = sum(g.get('points', 0) for g in graded)
        names = '<br>'.join(html.escape(e) for e in ex) or '—'
        rows.append(f'| [{p.stem}]({p.stem}.md) | {names} | {len(graded)} | {pts:g} |')
    return '\n'.join(rows)


def api_page(module: str, title: str, out: Path) -> str:
    "The API reference of `tinytorch.<module>`, left to mkdocstrings (signatures and docstrings, never source)."
    (out / 'api').mkdir(exist_ok=True)
    (out / 'api' / f'{module}.md').write_text(
        f'# tinytorch.{module}\n\n> The API of module {title}: signatures and docstrings of the reference package.\n\n'
        f'::: tinytorch.{module}\n    options:\n      show_root_heading: false\n', encoding='utf-8')
    return f'api/{module}.md'


# --------------------------------------------------------------------------------------------------- leak check
def secrets(nbs) -> dict:
    "Every solution and hidden-test line of every notebook in `nbs` (`secret_lines`), mapped to its notebook."
    notebooks = {}
    for p in sorted(Path(nbs).glob('*.ipynb')):
        try:
            notebooks[p.name] = json.loads(p.read_text(encoding='utf-8'))
        except ValueError:
            continue
    public = set().union(*map(public_lines, notebooks.values())) if notebooks else set()
    found = {}
    for name, nb in notebooks.items():
        for line in secret_lines(nb, public):
            found.setdefault(line, name)
    return found


def _json_strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _json_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _json_strings(v)


def _squash(text: str) -> str:
    return re.sub(r'\s+', ' ', text)


_TAG = re.compile(r'<[^>]*>')
_ATTR = re.compile(r'\s[\w:.-]+\s*=\s*(?:"([^"]*)"|\'([^\']*)\')')
_WORD = re.compile(r'\w+')


def text_views(path: Path) -> list:
    "Ways a line can hide in a built file: raw, HTML-unescaped, the text of the HTML, JSON-decoded strings."
    raw = path.read_bytes().decode('utf-8', errors='replace')
    views = [raw, html.unescape(raw), raw.replace('\\n', '\n').replace('\\"', '"').replace("\\'", "'")]
    if path.suffix in ('.html', '.htm', '.svg', '.xml'):
        views.append(html.unescape(_TAG.sub('', raw)))                       # the text, tags removed
        views.append(' '.join(html.unescape(a or b) for a, b in _ATTR.findall(raw)))   # attribute values
    if path.suffix in ('.json', '.ipynb', '.map'):
        try:
            views.append('\n'.join(_json_strings(json.loads(raw))))
        except ValueError:
            pass
    return [_squash(v) for v in views]


def find_leaks(site, nbs=None, lines=None) -> list:
    """[(file, notebook, line)] for every secret line of `nbs` (or the given {line: notebook}) found in `site`.

    Exact substring search in every view of every text file; a line is searched for only in files that hold
    each of its inner words (its first and last words may be the ends of longer ones), which spares most of it."""
    lines = secrets(nbs) if lines is None else lines
    wanted = {}
    for k, v in lines.items():
        line = _squash(k)
        wanted[line] = (v, set(_WORD.findall(line)[1:-1]))
    leaks = []
    for f in sorted(Path(site).rglob('*')):
        if not f.is_file() or f.suffix.lower() not in TEXT_SUFFIXES:
            continue
        views = text_views(f)
        words = set().union(*(_WORD.findall(v) for v in views))
        for line, (nb, inner) in wanted.items():
            if inner <= words and any(line in v for v in views):
                leaks.append((str(f.relative_to(site)), nb, line))
    return leaks


# --------------------------------------------------------------------------------------------------------- build
def markdown_twin(stem: str) -> str:
    """Where nbdev's `Docs:` line in a module's docstring points, relative to the site: `06_attention` ->
    `attention.html.md` (nbdev's `nbpath2html` rule plus `.md`). The site serves the student page's Markdown there."""
    return nbpath2html(Path(stem)).as_posix() + '.md'


def _pages(nbs: Path) -> list:
    "The site's sources in course order: `index.ipynb`, every `NN_*.ipynb`, then the `.qmd`/`.md` pages."
    first = [nbs / 'index.ipynb'] if (nbs / 'index.ipynb').exists() else []
    rest = sorted(p for p in list(nbs.glob('*.qmd')) + list(nbs.glob('*.md')) if not p.name.startswith(('_', '.')))
    return first + course_notebooks(nbs) + rest


def build(nbs='nbs', out='_site', cache='_docs_cache', execute: bool = True, jobs: int = 2,
          timeout: int = 1800, strict: bool = False, stage='_docs_build', config=None) -> dict:
    """Stage the student pages of `nbs`, render them with MkDocs into `out`; return {'pages': [...], 'seconds'}.

    Raises `LeakError` (leaving `out` untouched) when a built file contains a solution or hidden-test line.
    A notebook that cannot be staged is left out with a warning, or raises with `strict`."""
    t0 = time.time()
    nbs, out, cache, stage = Path(nbs).resolve(), Path(out).resolve(), Path(cache).resolve(), Path(stage).resolve()
    config = Path(config).resolve() if config else ROOT / 'mkdocs.yml'
    sources = {p: p.read_text(encoding='utf-8') for p in _pages(nbs)}          # one snapshot
    modules = [p for p in sources if re.match(r'\d\d_', p.name)]
    executed = {}
    if execute and modules:
        executed = execute_notebooks({p: sources[p] for p in modules}, cache, nbs.parent, jobs=jobs,
                                     timeout=timeout)

    docs = stage / 'docs'
    shutil.rmtree(stage, ignore_errors=True)
    docs.mkdir(parents=True)
    shutil.copytree(ASSETS, docs / 'assets', ignore=shutil.ignore_patterns('README.md'))
    names = {p.stem for p in sources}
    report, api = [], []
    for p, text in sources.items():
        try:
            if p.suffix == '.ipynb':
                page = stage_notebook(p, executed.get(p), text, names, docs)
                mod = _default_exp(nbformat.reads(text, as_version=4)) if page['module'] else None
                if mod and importlib.util.find_spec(f'tinytorch.{mod}') is None:
                    _log(f'{p.name}: tinytorch.{mod} is not in the package (run nbdev-export); no API page')
                elif mod:
                    api.append({f'tinytorch.{mod}': api_page(mod, page['title'], docs)})
            else:
                page = stage_markdown(p, names, docs, exercise_table(nbs))
        except Exception as e:
            if strict:
                raise
            _log(f'{p.name}: left out of the site ({type(e).__name__}: {e})')
            continue
        page['file'] = f"{page['name']}.html"
        report.append(page)
    nav = ([{'Home': 'index.md'}] if any(p['name'] == 'index' for p in report) else []) \
        + [{'Modules': [{p['title']: f"{p['name']}.md"} for p in report if p['module']]}] \
        + ([{'API reference': api}] if api else []) \
        + [{p['title']: f"{p['name']}.md"} for p in report if not p['module'] and p['name'] != 'index']
    tmp = out.with_name(out.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    (stage / 'mkdocs.yml').write_text(yaml.safe_dump(
        {'INHERIT': str(config), 'docs_dir': str(docs), 'site_dir': str(tmp), 'nav': nav},
        sort_keys=False, allow_unicode=True), encoding='utf-8')
    run = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--quiet', '-f', str(stage / 'mkdocs.yml')],
                         cwd=config.parent, capture_output=True, text=True,
                         env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'})   # Material's notice (CONTRIBUTING.md)
    if run.returncode:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f'mkdocs build failed:\n{run.stderr[-4000:]}')
    for page in report:                  # the pages' Markdown where nbdev's module docstrings link them
        if page['module']:
            shutil.copyfile(docs / f"{page['name']}.md", tmp / markdown_twin(page['name']))

    leaks = find_leaks(tmp, nbs)
    if leaks:
        shutil.rmtree(tmp, ignore_errors=True)
        shown = '\n'.join(f'  {f}: {line!r} (from {nb})' for f, nb, line in leaks[:20])
        raise LeakError(f'the docs build would publish {len(leaks)} solution/hidden-test line(s):\n{shown}')
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    seconds = time.time() - t0
    _log(f'built {len(report)} pages (and {len(api)} API pages) into {out} in {seconds:.1f} s; leak check: clean')
    api = [next(iter(a.values())) for a in api]
    order = [f'{p["name"]}.html' for p in report if p['name'] == 'index'] \
        + [p['file'] for p in report if p['module']] + [a.replace('.md', '.html') for a in api] \
        + [p['file'] for p in report if not p['module'] and p['name'] != 'index']
    return dict(pages=report, api=api, order=order, seconds=seconds, out=str(out))
