"""The docs site, `python -m coursetools docs`: the Quarto project of `nbs/`, rendered from what students may see.

Quarto cannot be installed everywhere this course is built, so this module renders the project itself, reading
the same `_quarto.yml` (with its `nbdev.yml` and `sidebar.yml`) that `nbdev-docs` reads. For each module
notebook `nbs/NN_name.ipynb` it

1. executes the *instructor* notebook, to get its outputs (figures): cached in `_docs_cache/` by a hash of the
   notebook and of the package, and run without its `nbdev_export()` cell (a docs build writes no package);
2. takes the *student version* (`coursetools.release.student_version`): solutions are stubs, hidden tests gone;
3. grafts an executed output onto a student cell only if the cell is neither a solution nor a graded cell and its
   source is the same in both versions, and never an error or stderr output (a traceback quotes source lines);
4. shows every `#| export` cell as its API reference only, signature and docstring from the package (`inspect`):
   the body of an exported cell never reaches the site;
5. renders the pages (markdown, KaTeX math shipped with the site, figures as files), copies the student
   notebooks for download, and scans every file written for every solution line and hidden test of `nbs/`
   (`find_leaks`): a build that would leak one fails, and the previous site is left in place.
"""
import ast
import copy
import hashlib
import html
import importlib
import inspect
import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import markupsafe
import nbformat
import yaml

from .notebooks import EXERCISE, course_notebooks, exercises, nbgrader_meta, public_lines, secret_lines

ASSETS = Path(__file__).parent / 'docs_assets'
CACHE_VERSION = '2'   # bump when what is cached (the executed instructor notebook) changes meaning
TEXT_SUFFIXES = {'.html', '.htm', '.css', '.js', '.json', '.ipynb', '.txt', '.md', '.xml', '.svg', '.map'}


class LeakError(RuntimeError):
    "The built site contains a line of a solution or of a hidden test."


def _log(msg):
    print(f'docs: {msg}', file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- configuration
def _merge(a: dict, b: dict) -> dict:
    "Deep-merge `b` into a copy of `a` (mappings merge, everything else is replaced)."
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def site_config(nbs) -> dict:
    "`_quarto.yml` with its `metadata-files` merged in, as Quarto reads it."
    nbs = Path(nbs)
    main = yaml.safe_load((nbs / '_quarto.yml').read_text(encoding='utf-8')) or {}
    cfg = {}
    for name in main.get('metadata-files', []):
        p = nbs / name
        if p.exists():
            cfg = _merge(cfg, yaml.safe_load(p.read_text(encoding='utf-8')) or {})
    return _merge(cfg, main)


def render_targets(nbs, cfg) -> list:
    "The documents `project.render` names (globs allowed), in order; Quarto's default is every notebook and .qmd."
    nbs = Path(nbs)
    patterns = (cfg.get('project') or {}).get('render') or ['*.ipynb', '*.qmd']
    found = []
    for pat in patterns:
        for p in sorted(nbs.glob(pat)):
            if p.is_file() and not p.name.startswith(('_', '.')) and p not in found:
                found.append(p)
    return found


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


def _execute_one(text: str, folder: str, dest: str, timeout: int):
    "Execute an instructor notebook (its text) in `folder` into `dest`; None, or why it could not run."
    from nbclient import NotebookClient
    try:
        nb = _runnable(nbformat.reads(text, as_version=4))
        NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=True,
                       resources={'metadata': {'path': folder}}).execute(stderr=subprocess.DEVNULL)
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


# ------------------------------------------------------------------------------------------------- API reference
def _short(sig: str) -> str:
    "Annotations as the course writes them: `Tensor`, `np.ndarray` (not `tinytorch.tensor.Tensor`, `numpy.ndarray`)."
    return re.sub(r'\bnumpy\.', 'np.', re.sub(r'\btinytorch\.\w+\.', '', sig))


def _sig(obj, node) -> str:
    if obj is not None:
        try:
            return _short(str(inspect.signature(obj)))
        except (TypeError, ValueError):
            pass
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        ret = f' -> {ast.unparse(node.returns)}' if node.returns else ''
        return f'({ast.unparse(node.args)}){ret}'
    return '()'


def _doc(obj, node) -> str:
    if obj is not None and getattr(obj, '__doc__', None):
        return inspect.cleandoc(obj.__doc__)
    return ast.get_docstring(node) or ''


def api_entries(src: str, module) -> list:
    """The public functions and classes an exported cell defines: [{name, kind, signature, doc, members}].

    Names and order come from the cell (`ast`), signatures and docstrings from the package object (`inspect`);
    no function body is ever read into the result."""
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return []
    out = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith('_'):
            continue
        obj = getattr(module, node.name, None) if module is not None else None
        if isinstance(node, ast.ClassDef):
            bases = ', '.join(ast.unparse(b) for b in node.bases)
            init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == '__init__'), None)
            sig = _sig(obj, init) if (init is not None or obj is not None) else '()'
            members = []
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith('_'):
                    m = inspect.getattr_static(obj, item.name, None) if obj is not None else None
                    m = m.__func__ if isinstance(m, (staticmethod, classmethod)) else m
                    kind = next((ast.unparse(d) for d in item.decorator_list
                                 if ast.unparse(d) in ('staticmethod', 'classmethod', 'property')), '')
                    members.append(dict(name=item.name, kind=kind, signature='' if kind == 'property' else _sig(m, item),
                                        doc=(_doc(m, item).splitlines() or [''])[0]))
                elif isinstance(item, ast.Assign):
                    for t in item.targets:
                        if isinstance(t, ast.Name) and not t.id.startswith('_'):
                            is_prop = isinstance(item.value, ast.Call) and ast.unparse(item.value.func) == 'property'
                            members.append(dict(name=t.id, kind='property' if is_prop else 'attribute',
                                                signature='', doc=''))
            out.append(dict(name=node.name, kind='class', bases=bases, signature=sig, doc=_doc(obj, node),
                            members=members))
        else:
            out.append(dict(name=node.name, kind='function', signature=_sig(obj, node), doc=_doc(obj, node),
                            members=[]))
    return out


def _api_html(entries, md) -> str:
    parts = []
    for e in entries:
        head = f'class {e["name"]}' + (f'({e["bases"]})' if e.get('bases') else '') if e['kind'] == 'class' else e['name']
        sig = f'{e["name"]}{e["signature"]}'
        doc = md(e['doc']) if e['doc'] else ''
        members = ''
        if e['members']:
            rows = []
            for m in e['members']:
                label = f'{e["name"]}.{m["name"]}{m["signature"]}'
                note = f' <em>({m["kind"]})</em>' if m['kind'] in ('property', 'attribute', 'staticmethod', 'classmethod') else ''
                rows.append(f'<dt id="{e["name"]}.{m["name"]}"><code>{html.escape(label)}</code>{note}</dt>'
                            f'<dd>{_inline_md(md, m["doc"])}</dd>')
            members = f'<dl class="api-methods">{"".join(rows)}</dl>'
        parts.append(f'<div class="api-entry" id="{e["name"]}"><h3 class="api-name">{html.escape(head)}</h3>'
                     f'<pre class="api-signature"><code>{html.escape(sig)}</code></pre>'
                     f'<div class="api-doc">{doc}</div>{members}</div>')
    return '\n'.join(parts)


def _inline_md(md, text: str) -> str:
    out = md(text).strip() if text else ''
    return out[3:-4] if out.startswith('<p>') and out.endswith('</p>') else out


# ---------------------------------------------------------------------------------------------------- markdown
def _slug(text: str) -> str:
    text = re.sub(r'<[^>]+>', '', html.unescape(text)).lower()
    return re.sub(r'[^\w]+', '-', text).strip('-') or 'section'


class _Markdown:
    "Markdown to HTML (nbconvert's mistune setup) with Quarto's math markup and unique heading ids."

    def __init__(self):
        from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_by_name
        self.ids, self.headings = set(), []
        outer = self

        class Renderer(IPythonRenderer):
            # Math was taken out before parsing (`_protect_math`): dollars left are text, not math.
            def block_math(self, body):
                return html.escape(f'$${body}$$', quote=False)

            def inline_math(self, body):
                return html.escape(f'${body}$', quote=False)

            def latex_environment(self, name, body):
                tex = html.escape(f'\\begin{{{name}}}{body}\\end{{{name}}}', quote=False)
                return f'<span class="math display">{tex}</span>'

            def heading(self, text, level, **attrs):
                return outer.heading(text, level)

            def block_code(self, code, info=None):
                lang = (info or '').split()[0] if (info or '').strip() else ''
                try:
                    lexer = get_lexer_by_name(lang) if lang else None
                except Exception:
                    lexer = None
                if lexer is None:
                    return f'<pre><code>{html.escape(code)}</code></pre>\n'
                return highlight(code, lexer, HtmlFormatter())

        self._md = MarkdownWithMath(renderer=Renderer(escape=False))

    def heading(self, text, level, toc=True):
        base = _slug(text)
        hid, n = base, 1
        while hid in self.ids:
            n += 1
            hid = f'{base}-{n}'
        self.ids.add(hid)
        if toc and level in (2, 3):
            self.headings.append((level, hid, re.sub(r'<[^>]+>', '', text)))
        return f'<h{level} id="{hid}" class="anchored">{text}<a class="anchor-link" href="#{hid}">¶</a></h{level}>\n'

    def __call__(self, text: str) -> str:
        text, maths = _protect_math(text)
        first = len(self.headings)
        out = self._md.render(text)
        for i, (display, tex) in enumerate(maths):
            kind = 'display' if display else 'inline'
            out = out.replace(f'zzMATH{i}zz', f'<span class="math {kind}">{html.escape(tex, quote=False)}</span>', 1)
        for k in range(first, len(self.headings)):     # math in a heading: the page's table of contents too
            level, hid, title = self.headings[k]
            for i, (_, tex) in enumerate(maths):
                title = title.replace(f'zzMATH{i}zz', f'<span class="math inline">{html.escape(tex, quote=False)}</span>')
            self.headings[k] = (level, hid, markupsafe.Markup(title))  # already HTML (tags stripped)
        return out


# Code first (its dollars are not math), then $$display$$, then $inline$ (pandoc's rule: no space inside the dollars).
_MATH_OR_CODE = re.compile(r'(?P<fence>^[ \t]*(?P<ticks>```+|~~~+).*?^[ \t]*(?P=ticks)[ \t]*$)'
                           r'|(?P<code>(?P<bt>`+).+?(?P=bt))'
                           r'|(?<!\\)\$\$(?P<display>.+?)(?<!\\)\$\$'
                           r'|(?<![\\$])\$(?P<inline>[^\s$](?:[^$]*?[^\s\\$])?)\$(?!\d)',
                           re.MULTILINE | re.DOTALL)


def _protect_math(text: str):
    """Take the math out of markdown before it is parsed (as Jupyter does), so that a line of an equation that
    starts with `+` or `-` is not read as a list: text with placeholders, and [(display, tex)]."""
    maths = []

    def sub(m):
        if m.group('fence') or m.group('code'):
            return m.group(0)
        display = m.group('display') is not None
        maths.append((display, m.group('display') if display else m.group('inline')))
        return f'zzMATH{len(maths) - 1}zz'
    return _MATH_OR_CODE.sub(sub, text), maths


def _highlight(code: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    return highlight(code, PythonLexer(), HtmlFormatter())


_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


# ------------------------------------------------------------------------------------------------------- staging
def _title_and_body(text: str):
    "Split a leading `# Title` and `> description` off a markdown cell (nbdev's front matter convention)."
    lines = text.strip('\n').splitlines()
    if not lines or not lines[0].startswith('# '):
        return None, None, text
    title, i, desc = lines[0][2:].strip(), 1, []
    while i < len(lines) and not lines[i].strip():
        i += 1
    while i < len(lines) and lines[i].startswith('>'):
        desc.append(lines[i][1:].strip())
        i += 1
    return title, ' '.join(desc) or None, '\n'.join(lines[i:])


def _safe_outputs(outputs) -> list:
    "The outputs a student page may show: no errors, no stderr (tracebacks and warnings quote source lines)."
    keep = []
    for o in outputs:
        t = o.get('output_type')
        if t == 'stream' and o.get('name') == 'stdout':
            keep.append(o)
        elif t in ('display_data', 'execute_result'):
            keep.append(o)
    return keep


def stage_notebook(path: Path, executed=None, text: str = None) -> dict:
    """One module page from the student version of `path`: {'title', 'description', 'cells', 'student'}.

    `cells` are dicts of kind 'markdown' (text), 'api' (entries), 'code' (source, outputs, check).
    `executed` is the executed instructor notebook whose outputs may be grafted."""
    from .release import strip_locked_marker, student_version
    instructor = nbformat.reads(path.read_text(encoding='utf-8') if text is None else text, as_version=4)
    module_nb = bool(re.match(r'\d\d_', path.name))
    student = student_version(copy.deepcopy(instructor)) if module_nb else copy.deepcopy(instructor)
    if executed is not None and [c.get('id') for c in executed.cells] != [c.get('id') for c in instructor.cells]:
        _log(f'{path.name}: the executed copy does not match the notebook cell for cell; no outputs shown')
        executed = None
    modname = _default_exp(instructor)
    module = None
    if modname:
        try:
            module = importlib.import_module(f'tinytorch.{modname}')
        except Exception as e:                            # a half-written module: signatures from the source
            _log(f'{path.name}: cannot import tinytorch.{modname} ({type(e).__name__}); API from the notebook source')
    title = description = None
    cells = []
    for i, (cell, orig) in enumerate(zip(student.cells, instructor.cells)):
        if cell.cell_type == 'markdown':
            text = cell.source
            if title is None:
                t, d, rest = _title_and_body(text)
                if t is not None:
                    title, description, text = t, d, rest
            if text.strip():
                cells.append(dict(kind='markdown', text=text))
            continue
        if cell.cell_type != 'code':
            continue
        src = strip_locked_marker(cell.source)        # "(read-only)" first lines are for JupyterLab, not the site
        d, body = directives(src)
        if 'hide' in d or 'default_exp' in d or 'exporti' in d or _false(d.get('include', 'true')) or not body.strip():
            continue
        if {'export', 'exports'} & d.keys():
            entries = api_entries(body, module)
            if entries:
                cells.append(dict(kind='api', entries=entries))
            continue
        meta = nbgrader_meta(cell)
        if not module_nb and (meta.get('solution') or meta.get('grade')):
            continue                                      # nbgrader cells outside a module: never shown
        outputs = []
        if (executed is not None and not meta.get('solution') and not meta.get('grade')
                and src == orig.source and not _false(d.get('output', 'true'))):
            outputs = _safe_outputs(executed.cells[i].get('outputs', []))
        show_source = not _false(d.get('echo', 'true'))
        cells.append(dict(kind='code', source=body if show_source else '', outputs=outputs,
                          check=bool(meta.get('grade'))))
    return dict(title=title or path.stem, description=description, cells=cells, student=student)


def stage_markdown(path: Path) -> dict:
    "A `.qmd`/`.md` page: YAML front matter (title, description) and markdown."
    text = path.read_text(encoding='utf-8')
    meta = {}
    m = re.match(r'^---\s*\n(.*?)\n---\s*\n', text, re.DOTALL)
    if m:
        meta, text = yaml.safe_load(m.group(1)) or {}, text[m.end():]
    title, desc = meta.get('title'), meta.get('description')
    if title is None:
        title, desc, text = _title_and_body(text)
    return dict(title=title or path.stem, description=desc, cells=[dict(kind='markdown', text=text)], student=None)


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
        rows.append(f'| [{p.stem}]({p.stem}.html) | {names} | {len(graded)} | {pts:g} |')
    return '\n'.join(rows)


# ---------------------------------------------------------------------------------------------------- rendering
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ page.title }} – {{ site.title }}</title>
{% if page.description %}<meta name="description" content="{{ page.description }}">{% endif %}
<link rel="icon" href="data:,">
<link rel="stylesheet" href="katex/katex.min.css">
<link rel="stylesheet" href="pygments.css">
<link rel="stylesheet" href="styles.css">
<script defer src="katex/katex.min.js"></script>
<script defer src="site.js"></script>
</head>
<body>
<nav class="site-navbar">
  <a class="site-title" href="index.html">{{ site.title }}</a>
  <span class="site-nav">{% for item in navbar %}<a href="{{ item.href }}">{{ item.text }}</a>{% endfor %}</span>
</nav>
<div class="site-body">
<aside class="site-sidebar" aria-label="Pages">
{{ sidebar }}
</aside>
<main class="page-main" id="quarto-document-content">
<header class="page-header">
<h1 class="page-title title">{{ page.title }}</h1>
{% if page.description %}<div class="description">{{ page.description_html }}</div>{% endif %}
{% if page.download %}<p class="page-download"><a href="{{ page.download }}" download>Download the student notebook ({{ page.download_name }})</a></p>{% endif %}
</header>
{{ body }}
</main>
<nav class="page-toc" aria-label="On this page">
{% if toc %}<div class="toc-title">On this page</div><ul>{% for level, hid, text in toc %}<li class="toc-h{{ level }}"><a href="#{{ hid }}">{{ text }}</a></li>{% endfor %}</ul>{% endif %}
</nav>
</div>
<footer class="page-footer">{{ footer }}</footer>
</body>
</html>
"""

SITE_JS = """// Typeset every .math element with the KaTeX shipped in katex/ (no network).
document.addEventListener('DOMContentLoaded', function () {
  document.querySelectorAll('.math').forEach(function (el) {
    katex.render(el.textContent, el, {displayMode: el.classList.contains('display'), throwOnError: false});
  });
  document.documentElement.dataset.mathTypeset = 'true';
});
"""


def _href(target: str, pages: dict) -> str:
    "A link to a document of the project (`00_tensor.ipynb`, `instructors.qmd#x`) as its page, else unchanged."
    base, sep, frag = target.partition('#')
    stem = Path(base).stem
    if '/' not in base and Path(base).suffix in ('.ipynb', '.qmd', '.md') and stem in pages:
        return f'{stem}.html{sep}{frag}'
    return target


def _link_code(fragment: str, symbols: dict, pages: dict, here: str) -> str:
    "Link `Name`, `Name.method`, `Name()` and `00_name.ipynb` code spans to their page (not inside links or pre)."
    def sub(m):
        if m.group(1):
            return m.group(0)
        name = html.unescape(m.group(2))
        key = name[:-2] if name.endswith('()') else name
        target = symbols.get(key)
        if target is None and key.endswith('.ipynb') and Path(key).stem in pages:
            target = f'{Path(key).stem}.html'
        if target is None:
            return m.group(0)
        if target.startswith(f'{here}#'):
            target = target[len(here):]
        return f'<a href="{target}"><code>{m.group(2)}</code></a>'
    pieces = re.split(r'(<h[1-6]\b.*?</h[1-6]>)', fragment, flags=re.DOTALL)   # headings stay as they are
    return ''.join(p if p.startswith('<h') else re.sub(r'(<a\b[^>]*>|<pre>)?<code>([^<]*)</code>', sub, p)
                   for p in pieces)


def _rewrite_links(fragment: str, pages: dict) -> str:
    def sub(m):
        target = _href(m.group(2), pages)
        extra = ' download' if target.startswith('notebooks/') and target.endswith('.ipynb') else ''
        return f'{m.group(1)}"{target}"{extra}'
    return re.sub(r'(<a\s[^>]*?href=)"([^"]*)"', sub, fragment)


def _output_html(o, page: str, figures: list, site: Path, md) -> str:
    t = o.get('output_type')
    if t == 'stream':
        return f'<pre class="cell-output-stdout"><code>{html.escape(_ANSI.sub("", o.get("text", "")))}</code></pre>'
    data = o.get('data', {})
    for mime, ext in (('image/svg+xml', 'svg'), ('image/png', 'png'), ('image/jpeg', 'jpg')):
        if mime in data:
            n = len(figures) + 1
            name = f'figures/{page}-{n}.{ext}'
            (site / 'figures').mkdir(exist_ok=True)
            payload = data[mime]
            if ext == 'svg':
                (site / name).write_text(payload if isinstance(payload, str) else ''.join(payload), encoding='utf-8')
            else:
                import base64
                (site / name).write_bytes(base64.b64decode(payload))
            figures.append(name)
            alt = html.escape(f'Figure {n} of {page}')
            return f'<img class="figure" src="{name}" alt="{alt}">'
    if 'text/html' in data:
        return f'<div class="output-html">{data["text/html"]}</div>'
    if 'text/markdown' in data:
        return md(data['text/markdown'])
    if 'text/latex' in data:
        return md(data['text/latex'])
    if 'text/plain' in data:
        return f'<pre class="cell-output-display"><code>{html.escape(_ANSI.sub("", data["text/plain"]))}</code></pre>'
    return ''


def _render_body(page: dict, name: str, symbols: dict, pages: dict, site: Path):
    md = _Markdown()
    parts, figures = [], []

    def prose(text):
        return _link_code(_rewrite_links(md(text), pages), symbols, pages, f'{name}.html')

    for c in page['cells']:
        if c['kind'] == 'markdown':
            parts.append(f'<div class="cell cell-markdown">{prose(c["text"])}</div>')
        elif c['kind'] == 'api':
            parts.append(f'<div class="cell cell-api">{_api_html(c["entries"], prose)}</div>')
        else:
            inner = []
            if c['check']:
                inner.append('<div class="cell-label">Graded check (the instructor adds hidden tests when grading)</div>')
            if c['source'].strip():
                inner.append(f'<div class="cell-input sourceCode">{_highlight(c["source"])}</div>')
            outs = [_output_html(o, name, figures, site, md) for o in c['outputs']]
            if any(outs):
                inner.append(f'<div class="cell-output">{"".join(outs)}</div>')
            cls = 'cell cell-code' + (' cell-check' if c['check'] else '')
            parts.append(f'<div class="{cls}">{"".join(inner)}</div>')
    return '\n'.join(parts), md.headings, figures


def _sidebar_items(contents, nbs: Path, pages: dict) -> list:
    "Resolve Quarto sidebar `contents` (paths, globs, `section`s, `href`/`text` items) to built pages."
    items = []
    if isinstance(contents, str):
        contents = [contents]
    for entry in contents or []:
        if isinstance(entry, str):
            paths = sorted(nbs.glob(entry)) if any(ch in entry for ch in '*?[') else [nbs / entry]
            for p in paths:
                if p.stem in pages:
                    items.append(('page', p.stem, pages[p.stem]['title']))
        elif isinstance(entry, dict) and 'section' in entry:
            items.append(('section', entry['section'], _sidebar_items(entry.get('contents'), nbs, pages)))
        elif isinstance(entry, dict) and 'href' in entry:
            stem = Path(entry['href']).stem
            if stem in pages:
                items.append(('page', stem, entry.get('text') or pages[stem]['title']))
    return items


def _sidebar_html(items, here: str) -> str:
    out = ['<ul>']
    for kind, a, b in items:
        if kind == 'page':
            active = ' class="active" aria-current="page"' if a == here else ''
            out.append(f'<li><a href="{a}.html"{active}>{html.escape(b)}</a></li>')
        else:
            out.append(f'<li><div class="section-title">{html.escape(a)}</div>{_sidebar_html(b, here)}</li>')
    out.append('</ul>')
    return ''.join(out)


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


def text_views(path: Path) -> list:
    "Ways a line can hide in a built file: raw, HTML-unescaped, the text of the HTML, JSON-decoded strings."
    raw = path.read_bytes().decode('utf-8', errors='replace')
    views = [raw, html.unescape(raw), raw.replace('\\n', '\n').replace('\\"', '"').replace("\\'", "'")]
    if path.suffix in ('.html', '.htm', '.svg', '.xml'):
        from bs4 import BeautifulSoup
        soup = BeautifulSoup(raw, 'html.parser')
        views.append(soup.get_text())
        views.append(' '.join(str(v) for tag in soup.find_all(True) for v in tag.attrs.values()))
    if path.suffix in ('.json', '.ipynb', '.map'):
        try:
            views.append('\n'.join(_json_strings(json.loads(raw))))
        except ValueError:
            pass
    return [_squash(v) for v in views]


def find_leaks(site, nbs=None, lines=None) -> list:
    "[(file, notebook, line)] for every secret line of `nbs` (or the given {line: notebook}) found in `site`."
    lines = secrets(nbs) if lines is None else lines
    wanted = {_squash(k): v for k, v in lines.items()}
    leaks = []
    for f in sorted(Path(site).rglob('*')):
        if not f.is_file() or f.suffix.lower() not in TEXT_SUFFIXES:
            continue
        views = text_views(f)
        for line, nb in wanted.items():
            if any(line in v for v in views):
                leaks.append((str(f.relative_to(site)), nb, line))
    return leaks


# --------------------------------------------------------------------------------------------------------- build
def build(nbs='nbs', out='_site', cache='_docs_cache', execute: bool = True, jobs: int = 2,
          timeout: int = 1800, strict: bool = False) -> dict:
    """Render the student site of `nbs` into `out`; return a report {'pages': [...], 'seconds': ...}.

    Raises `LeakError` (leaving `out` untouched) when a built file contains a solution or hidden-test line.
    A notebook that cannot be staged is left out with a warning, or raises with `strict`."""
    t0 = time.time()
    nbs, out, cache = Path(nbs).resolve(), Path(out).resolve(), Path(cache).resolve()
    cfg = site_config(nbs)
    website = cfg.get('website') or {}
    targets = render_targets(nbs, cfg)
    modules = [p for p in targets if p.suffix == '.ipynb' and re.match(r'\d\d_', p.name)]
    sources = {p: p.read_text(encoding='utf-8') for p in targets if p.suffix == '.ipynb'}   # one snapshot
    executed = {}
    if execute and modules:
        executed = execute_notebooks({p: sources[p] for p in modules}, cache, nbs.parent, jobs=jobs,
                                     timeout=timeout)

    pages = {}
    for p in targets:
        try:
            if p.suffix == '.ipynb':
                pages[p.stem] = stage_notebook(p, executed.get(p), sources[p])
                pages[p.stem]['module'] = p in modules
            else:
                pages[p.stem] = stage_markdown(p)
                pages[p.stem]['module'] = False
        except Exception as e:
            if strict:
                raise
            _log(f'{p.name}: left out of the site ({type(e).__name__}: {e})')
    for page in pages.values():                          # generated content a .qmd can ask for
        for c in page['cells']:
            if c['kind'] == 'markdown' and '<!-- exercise-table -->' in c['text']:
                c['text'] = c['text'].replace('<!-- exercise-table -->', exercise_table(nbs))

    symbols = {}
    for name, page in pages.items():
        for c in page['cells']:
            for e in c.get('entries', []) if c['kind'] == 'api' else []:
                symbols.setdefault(e['name'], f'{name}.html#{e["name"]}')
                for m in e['members']:
                    symbols.setdefault(f'{e["name"]}.{m["name"]}', f'{name}.html#{e["name"]}.{m["name"]}')

    tmp = out.with_name(out.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(ASSETS / 'katex', tmp / 'katex', ignore=shutil.ignore_patterns('README.md'))
    shutil.copy(nbs / 'styles.css', tmp / 'styles.css')
    from pygments.formatters import HtmlFormatter
    (tmp / 'pygments.css').write_text(HtmlFormatter().get_style_defs('.highlight'), encoding='utf-8')
    (tmp / 'site.js').write_text(SITE_JS, encoding='utf-8')
    (tmp / 'notebooks').mkdir()

    import jinja2
    template = jinja2.Environment(autoescape=True).from_string(PAGE)
    sidebar = _sidebar_items((website.get('sidebar') or {}).get('contents'), nbs, pages)
    navbar = []
    for item in (website.get('navbar') or {}).get('left', []):
        item = {'href': item} if isinstance(item, str) else item
        stem = Path(item['href']).stem
        if stem in pages:
            navbar.append(dict(href=_href(item['href'], pages), text=item.get('text') or pages[stem]['title']))
    footer = website.get('page-footer', {})
    footer = footer.get('left', '') if isinstance(footer, dict) else str(footer)
    md = _Markdown()
    report = []
    for name, page in pages.items():
        body, toc, figures = _render_body(page, name, symbols, pages, tmp)
        download = None
        if page['module'] and page['student'] is not None:
            nbformat.write(page['student'], tmp / 'notebooks' / f'{name}.ipynb')
            download = f'notebooks/{name}.ipynb'
        desc_html = _inline_md(md, page['description']) if page['description'] else ''
        text = template.render(
            site=dict(title=website.get('title', 'tinytorch')), navbar=navbar, footer=footer,
            sidebar=_markup(_sidebar_html(sidebar, name)),
            page=dict(title=page['title'], description=page['description'], description_html=_markup(desc_html),
                      download=download, download_name=f'{name}.ipynb'),
            body=_markup(body), toc=toc)
        (tmp / f'{name}.html').write_text(text, encoding='utf-8')
        report.append(dict(name=name, file=f'{name}.html', title=page['title'], figures=len(figures),
                           module=page['module'], download=download))

    leaks = find_leaks(tmp, nbs)
    if leaks:
        shutil.rmtree(tmp, ignore_errors=True)
        shown = '\n'.join(f'  {f}: {line!r} (from {nb})' for f, nb, line in leaks[:20])
        raise LeakError(f'the docs build would publish {len(leaks)} solution/hidden-test line(s):\n{shown}')
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    seconds = time.time() - t0
    _log(f'built {len(report)} pages into {out} in {seconds:.1f} s; leak check: clean')
    return dict(pages=report, seconds=seconds, out=str(out))


def _markup(s):
    from markupsafe import Markup
    return Markup(s)
