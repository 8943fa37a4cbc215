"""The docs site: built offline, every page opened in headless Chromium, and no solution or hidden test anywhere.

The site is built once per run into a temporary directory (executed notebooks come from `_docs_cache/` when
unchanged). The browser test needs Debian's chromium and the Python playwright package (`.ci/run` installs both);
it is skipped, saying why, where they are missing, except under CI (CI=true), where it fails.
Screenshots of every page go to artifacts/screenshots/."""
import functools
import http.server
import json
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import nbformat
import pytest
from bs4 import BeautifulSoup

from conftest import ROOT
from coursetools import docs
from coursetools.notebooks import course_notebooks, load, secret_lines

NBS = ROOT / 'nbs'
CHROMIUM = Path('/usr/bin/chromium')
SHOTS = ROOT / 'artifacts' / 'screenshots'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']

pytestmark = pytest.mark.xdist_group('docs')   # one worker builds the site once for all these tests


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp('docs') / 'site'
    report = docs.build(NBS, out, ROOT / '_docs_cache')
    return out, {p['name']: p for p in report['pages']}


@pytest.fixture(scope='module')
def site(built):
    return built[0]


@pytest.fixture(scope='module')
def pages(built):
    return built[1]


# ------------------------------------------------------------------------------------------------- the build
def test_pages(site, pages):
    assert {'index', 'instructors', '00_tensor'} <= pages.keys()
    assert pages['index']['title'] == 'tinytorch'
    for nb in course_notebooks(NBS):
        assert nb.stem in pages, f'{nb.name} has no page (see the build warnings)'


def test_every_module_page_links_its_student_notebook(site, pages):
    for name, page in pages.items():
        if not page['module']:
            continue
        assert page['download'] == f'notebooks/{name}.ipynb'
        nb = load(site / page['download'])
        text = json.dumps(nb)
        assert 'BEGIN SOLUTION' not in text and 'BEGIN HIDDEN TESTS' not in text
        assert 'raise NotImplementedError(\\"Exercise' in text
        assert all(not c.get('outputs') for c in nb['cells'] if c['cell_type'] == 'code')
        soup = BeautifulSoup((site / page['file']).read_text(), 'html.parser')
        assert soup.find('a', href=page['download'], download=True), f'{name}: no download link'


def test_api_reference_is_signature_and_docstring(site):
    soup = BeautifulSoup((site / '00_tensor.html').read_text(), 'html.parser')
    entry = soup.find(id='unbroadcast')
    assert entry is not None and 'api-entry' in entry['class']
    sig = entry.find(class_='api-signature').get_text()
    assert sig == 'unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray'
    assert 'Sum `grad`' not in entry.get_text() and 'Sum grad over the axes' in entry.get_text()
    tensor = soup.find(id='Tensor')
    assert tensor.find(id='Tensor.backward') is not None
    # the page shows code the student sees, never the body of an exported cell
    assert 'np.add.at(g, ctx.index, grad)' not in soup.get_text()


def test_figures_and_math_in_the_html(site, pages):
    text = (site / '00_tensor.html').read_text()
    assert len(re.findall(r'class="math (?:inline|display)"', text)) >= 5
    for page in pages.values():
        soup = BeautifulSoup((site / page['file']).read_text(), 'html.parser')
        imgs = soup.select('img.figure')
        assert len(imgs) == page['figures']
        for img in imgs:
            assert (site / img['src']).stat().st_size > 1000


def test_no_external_references(site):
    "Nothing the browser loads comes from the network: scripts, styles, images, fonts are all in the site."
    bad = []
    for f in site.rglob('*.html'):
        soup = BeautifulSoup(f.read_text(), 'html.parser')
        for tag, attr in (('script', 'src'), ('link', 'href'), ('img', 'src'), ('iframe', 'src'),
                          ('source', 'src'), ('video', 'src'), ('audio', 'src'), ('embed', 'src')):
            for el in soup.find_all(tag):
                v = el.get(attr, '')
                if re.match(r'^(https?:)?//', v):
                    bad.append((f.name, tag, v))
    for f in site.rglob('*.css'):
        bad += [(f.name, 'css', u) for u in re.findall(r'url\(\s*["\']?((?:https?:)?//[^)"\']+)', f.read_text())]
        for u in re.findall(r'url\(\s*["\']?([^)"\']+)', f.read_text()):
            if not u.startswith(('data:', 'http', '//')):
                assert (f.parent / u).exists(), f'{f.name} names {u}, which is not in the site'
    assert not bad, bad


# ------------------------------------------------------------------------------------------------- leaks
def test_no_solution_or_hidden_test_in_the_site(site):
    lines = docs.secrets(NBS)
    assert len(lines) >= 10, 'the leak check has nothing to look for'
    assert docs.find_leaks(site, lines=lines) == []


def test_leak_check_finds_a_planted_line(site, tmp_path):
    "The leak check can fail: a solution line planted as highlighted HTML, as notebook JSON, or HTML-escaped."
    nb = load(NBS / '00_tensor.ipynb')
    line = max(secret_lines(nb), key=len)                 # a long solution or hidden-test line
    copy = tmp_path / 'site'
    shutil.copytree(site, copy)
    page = copy / 'index.html'
    page.write_text(page.read_text().replace('</main>', docs._highlight('    ' + line + '\n') + '</main>'))
    book = copy / 'notebooks' / '00_tensor.ipynb'
    data = json.loads(book.read_text())
    data['cells'][-1]['source'] = ['x = 1\n', line + '\n']
    book.write_text(json.dumps(data, indent=1))
    (copy / 'escaped.html').write_text(f'<p title="{line.replace(chr(34), "&quot;")}">x</p>')
    leaks = docs.find_leaks(copy, NBS)
    assert {f for f, _, found in leaks if found == docs._squash(line)} == {
        'index.html', 'notebooks/00_tensor.ipynb', 'escaped.html'}
    assert docs.find_leaks(site, NBS) == []


LEAKY = {
    'cells': [
        {'cell_type': 'code', 'source': '#| default_exp leaky', 'metadata': {}, 'outputs': [], 'execution_count': None},
        {'cell_type': 'markdown', 'source': '# Leaky\n\n> A module whose demo prints its solution.', 'metadata': {}},
        {'cell_type': 'markdown', 'source': '### Exercise 99.1: implement twice', 'metadata': {}},
        {'cell_type': 'code', 'metadata': {'nbgrader': {'grade': False, 'grade_id': 'ex99_01', 'locked': False,
                                                        'schema_version': 3, 'solution': True, 'task': False}},
         'outputs': [], 'execution_count': None,
         'source': '#| export\ndef twice(x):\n    "Two times `x`."\n    ### BEGIN SOLUTION\n'
                   '    doubled_value_secret = x + x\n    return doubled_value_secret\n    ### END SOLUTION'},
        {'cell_type': 'code', 'source': 'import inspect\nprint(inspect.getsource(twice))', 'metadata': {},
         'outputs': [], 'execution_count': None},
    ],
    'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}},
    'nbformat': 4, 'nbformat_minor': 5,
}


@pytest.mark.slow
def test_build_refuses_to_publish_a_leak(tmp_path):
    "A demo cell that prints a solution's source: the build fails and writes no site."
    nbs = tmp_path / 'nbs'
    nbs.mkdir()
    for name in ('_quarto.yml', 'nbdev.yml', 'sidebar.yml', 'styles.css'):
        shutil.copy(NBS / name, nbs / name)
    nb = nbformat.from_dict(LEAKY)
    for i, c in enumerate(nb.cells):
        c['id'] = f'c{i}'
    nbformat.write(nbformat.from_dict({**nb, 'cells': [nb.cells[1]]}), nbs / 'index.ipynb')
    nbformat.write(nb, nbs / '99_leaky.ipynb')
    with pytest.raises(docs.LeakError, match='doubled_value_secret'):
        docs.build(nbs, tmp_path / 'site', tmp_path / 'cache')
    assert not (tmp_path / 'site').exists() and not (tmp_path / 'site.tmp').exists()
    # without the demo cell, the same module builds: the exported cell is shown as its signature only
    nb.cells = nb.cells[:4]
    nbformat.write(nb, nbs / '99_leaky.ipynb')
    docs.build(nbs, tmp_path / 'site', tmp_path / 'cache')
    page = (tmp_path / 'site' / '99_leaky.html').read_text()
    assert 'twice(x)' in page and 'Two times' in page and 'doubled_value_secret' not in page


# ------------------------------------------------------------------------------------------------- the browser
def _browser_or_skip():
    missing = []
    if not CHROMIUM.exists():
        missing.append(f'{CHROMIUM} (apt-get install chromium)')
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append('the playwright Python package (pip install playwright)')
    if missing:
        msg = 'browser test needs ' + ' and '.join(missing)
        if os.environ.get('CI'):
            pytest.fail(msg + ': .ci/run installs them, so CI must run this test')
        pytest.skip(msg)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope='module')
def server(site):
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown()
    httpd.server_close()


def _resolves(url: str, base: str, site: Path, cache: dict) -> str:
    "'' when an internal URL answers 200 and its #fragment exists on the target page, else what is wrong."
    if url in cache:
        return cache[url]
    path, frag = urldefrag(url)
    problem = ''
    try:
        with urllib.request.urlopen(path, timeout=10) as r:
            body = r.read()
            if r.status != 200:
                problem = f'HTTP {r.status}'
    except urllib.error.URLError as e:
        problem = str(e)
    if not problem and frag and path.endswith('.html'):
        soup = BeautifulSoup(body.decode('utf-8'), 'html.parser')
        if soup.find(id=unquote(frag)) is None:
            problem = f'no element with id {frag!r}'
    cache[url] = problem
    return problem


@pytest.mark.slow
def test_every_page_in_chromium(site, pages, server, tmp_path):
    """Each page: its title and content render, every internal link and image resolves, every equation is
    typeset by KaTeX (no raw TeX left), no figure is missing, nothing is requested from outside 127.0.0.1,
    and the console is clean. One screenshot per page (top of the page and the whole page)."""
    _browser_or_skip()
    from playwright.sync_api import sync_playwright
    SHOTS.mkdir(parents=True, exist_ok=True)
    home = tmp_path / 'home'                     # chromium writes into $HOME/.config and $HOME/.cache
    home.mkdir()
    problems, external, link_cache = [], [], {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     env={**os.environ, 'HOME': str(home)})
        context = browser.new_context(viewport={'width': 1280, 'height': 900})

        def route(r):
            if urlparse(r.request.url).hostname == '127.0.0.1' or r.request.url.startswith('data:'):
                r.continue_()
            else:
                external.append(r.request.url)
                r.abort()
        context.route('**/*', route)
        page = context.new_page()
        errors = []
        page.on('console', lambda m: errors.append(f'console {m.type}: {m.text}') if m.type == 'error' else None)
        page.on('pageerror', lambda e: errors.append(f'page error: {e}'))
        page.on('requestfailed', lambda r: errors.append(f'request failed: {r.url}'))
        page.on('response', lambda r: errors.append(f'HTTP {r.status}: {r.url}') if r.status >= 400 else None)
        for name, info in sorted(pages.items()):
            errors.clear()
            url = urljoin(server, info['file'])
            page.goto(url, wait_until='load')
            page.wait_for_function("document.documentElement.dataset.mathTypeset === 'true'", timeout=15000)
            page.evaluate('document.fonts.ready')
            state = page.evaluate("""() => {
                const main = document.querySelector('main');
                const visible = (el) => !el.closest('pre, code, script, style');
                const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
                let raw = [];
                for (let n = walker.nextNode(); n; n = walker.nextNode()) {
                    if (visible(n.parentElement) && !n.parentElement.closest('.katex') && /\\$|\\\\(frac|partial|mathbb|sum)/.test(n.textContent)) raw.push(n.textContent.trim().slice(0, 80));
                }
                return {
                    title: document.title,
                    h1: (document.querySelector('h1') || {}).textContent || '',
                    text: main.innerText.length,
                    imgs: [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
                    figures: document.querySelectorAll('img.figure').length,
                    math: document.querySelectorAll('.math').length,
                    typeset: document.querySelectorAll('.math > .katex, .math > .katex-display').length,
                    katexErrors: document.querySelectorAll('.katex-error').length,
                    raw: raw,
                    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
                    sidebar: [...document.querySelectorAll('.site-sidebar a')].map(a => a.getAttribute('href')),
                    katexFont: document.fonts.check('16px KaTeX_Main'),
                };
            }""")
            where = f'{name}:'
            if state['h1'].strip() != info['title'] or not state['title'].startswith(info['title']):
                problems.append(f"{where} title {state['title']!r} / h1 {state['h1']!r}, expected {info['title']!r}")
            if state['text'] < 300:
                problems.append(f"{where} only {state['text']} characters of content")
            problems += [f"{where} image {i['src']} did not load" for i in state['imgs'] if not i['ok']]
            if state['figures'] != info['figures']:
                problems.append(f"{where} {state['figures']} figures shown, {info['figures']} built")
            if state['typeset'] != state['math'] or state['katexErrors']:
                problems.append(f"{where} {state['math']} equations, {state['typeset']} typeset, "
                                f"{state['katexErrors']} KaTeX errors")
            if state['math'] and not state['katexFont']:
                problems.append(f'{where} the KaTeX fonts did not load')
            problems += [f'{where} raw TeX on the page: {r!r}' for r in state['raw']]
            if info['module'] and state['math'] == 0 and name == '00_tensor':
                problems.append(f'{where} no equations')
            for p in pages.values():
                if p['file'] not in state['sidebar']:
                    problems.append(f"{where} the sidebar has no link to {p['file']}")
            for link in state['links']:
                if urlparse(link).hostname == '127.0.0.1':
                    bad = _resolves(link, url, site, link_cache)
                    if bad:
                        problems.append(f'{where} link {link}: {bad}')
            problems += [f'{where} {e}' for e in errors]
            page.screenshot(path=str(SHOTS / f'{name}.png'))
            page.screenshot(path=str(SHOTS / f'{name}-full.png'), full_page=True)
        browser.close()
    assert not external, f'requests outside 127.0.0.1: {external}'
    assert not problems, '\n'.join(problems)
    assert all((SHOTS / f'{name}.png').stat().st_size > 10_000 for name in pages)
