"""The docs site: built offline with MkDocs, every page opened in headless Chromium (desktop and a 390 x 844
phone), and no solution or hidden test anywhere.

The site is built once per run into a temporary directory (executed notebooks come from `_docs_cache/` when
unchanged). The browser test needs Debian's chromium and the Python playwright package (`.ci/run` installs both);
it is skipped, saying why, where they are missing, except under CI (CI=true), where it fails.
Screenshots of every page go to artifacts/screenshots/ (desktop, phone, the phone's menu, dark mode)."""
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
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
    tmp = tmp_path_factory.mktemp('docs')
    report = docs.build(NBS, tmp / 'site', ROOT / '_docs_cache', stage=tmp / 'stage')
    return tmp / 'site', report


@pytest.fixture(scope='module')
def site(built):
    return built[0]


@pytest.fixture(scope='module')
def pages(built):
    return {p['name']: p for p in built[1]['pages']}


@pytest.fixture(scope='module')
def order(built):
    "Every page of the site (API pages too) in course order, as the nav lists them."
    return built[1]['order']


# ------------------------------------------------------------------------------------------------- the build
def test_pages_in_course_order(site, pages, order):
    assert {'index', 'instructors', '00_tensor'} <= pages.keys()
    modules = [nb.stem for nb in course_notebooks(NBS)]
    for stem in modules:
        assert stem in pages, f'{stem}.ipynb has no page (see the build warnings)'
    assert order[0] == 'index.html' and order[-1] == 'instructors.html'
    assert order[1:1 + len(modules)] == [f'{m}.html' for m in modules]
    assert all((site / f).exists() for f in order)


@pytest.mark.slow
def test_nav_picks_up_any_module_notebook(tmp_path):
    "A new `NN_name.ipynb` (module 09, say) gets a page and its place in the nav without touching a config."
    nbs = tmp_path / 'nbs'
    nbs.mkdir()
    for name in ('index.ipynb', '00_tensor.ipynb'):
        shutil.copy(NBS / name, nbs / name)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# Language model\n\n> Module nine.')])
    nbformat.write(nb, nbs / '09_language_model.ipynb')
    report = docs.build(nbs, tmp_path / 'site', tmp_path / 'cache', execute=False, stage=tmp_path / 'stage')
    assert report['order'][:3] == ['index.html', '00_tensor.html', '09_language_model.html']
    nav = (tmp_path / 'site' / '00_tensor.html').read_text()
    assert 'href="09_language_model.html"' in nav


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


def test_exercises_are_admonitions_with_the_stub(site):
    soup = BeautifulSoup((site / '00_tensor.html').read_text(), 'html.parser')
    boxes = soup.select('.admonition.example')
    titles = [b.select_one('.admonition-title').get_text() for b in boxes]
    assert any(t.startswith('Exercise 00.1: implement unbroadcast') for t in titles), titles
    first = boxes[[t.startswith('Exercise 00.1') for t in titles].index(True)].get_text()
    assert 'def unbroadcast(grad' in first and 'raise NotImplementedError("Exercise 00.1' in first
    assert soup.select('.admonition.success'), 'graded checks are not set apart'


def test_api_page_per_module_from_docstrings(site, built):
    assert len(built[1]['api']) == len(course_notebooks(NBS))
    soup = BeautifulSoup((site / 'api' / 'tensor.html').read_text(), 'html.parser')
    entry = soup.find(id='tinytorch.tensor.unbroadcast')
    assert entry is not None, 'no API entry for unbroadcast'
    text = re.sub(r'\s+', ' ', entry.parent.get_text())
    assert 'unbroadcast(grad: ndarray, shape: tuple) -> np.ndarray' in text
    assert 'Sum grad over the axes that broadcasting added' in text
    assert soup.find(id='tinytorch.tensor.Tensor.backward') is not None
    assert 'np.add.at(g, ctx.index, grad)' not in text           # docstrings, never source


def test_module_docstring_links_resolve(site):
    "nbdev ends each module's docstring with `Docs: <site_url>attention.html.md`: the site serves that file."
    site_url = re.search(r'^site_url:\s*(\S+)', (ROOT / 'mkdocs.yml').read_text(), re.M).group(1)
    links = {}
    for py in sorted((ROOT / 'tinytorch').glob('*.py')):
        m = re.search(r'^Docs: (\S+?)"*$', py.read_text(encoding='utf-8'), re.M)
        if m:
            links[py.name] = m.group(1)
    assert len(links) >= len(course_notebooks(NBS)), links
    for name, url in links.items():
        assert url.startswith(site_url), (name, url, site_url)
        target = site / url[len(site_url):]
        assert target.is_file(), f'{name} links {url}, which the site does not have'
        text = target.read_text(encoding='utf-8')
        assert text.startswith('# ') and 'BEGIN SOLUTION' not in text, (name, text[:200])


def test_figures_have_captions(site, pages):
    assert sum(p['figures'] for p in pages.values()) >= 10
    for page in pages.values():
        # every figure of a module says what it shows (`#| fig-cap:`), not only the section it is in
        assert not page['module'] or page['captioned'] == page['figures'], (page['name'], page['captioned'])
        soup = BeautifulSoup((site / page['file']).read_text(), 'html.parser')
        figures = soup.select('figure:has(img)')
        assert len(figures) == page['figures'], page['name']
        for fig in figures:
            assert (site / fig.img['src']).stat().st_size > 1000
            cap = fig.find('figcaption')
            assert cap is not None and re.match(r'Figure \d+\. \S', cap.get_text()), fig


def test_no_external_references(site):
    "Nothing the browser loads comes from the network: scripts, styles, images, fonts are all in the site."
    bad = []
    for f in site.rglob('*.html'):
        soup = BeautifulSoup(f.read_text(), 'html.parser')
        for tag, attr in (('script', 'src'), ('link', 'href'), ('img', 'src'), ('iframe', 'src'),
                          ('source', 'src'), ('video', 'src'), ('audio', 'src'), ('embed', 'src')):
            for el in soup.find_all(tag):
                v = el.get(attr, '')
                if re.match(r'^(https?:)?//', v) and not (tag == 'link' and el.get('rel') == ['canonical']):
                    bad.append((f.name, tag, v))
    for f in site.rglob('*.css'):
        bad += [(f.name, 'css', u) for u in re.findall(r'url\(\s*["\']?((?:https?:)?//[^)"\']+)', f.read_text())]
    assert not bad, bad


# ------------------------------------------------------------------------------------------------- leaks
def test_no_solution_or_hidden_test_in_the_site(site):
    lines = docs.secrets(NBS)
    assert len(lines) >= 10, 'the leak check has nothing to look for'
    files = {str(f.relative_to(site)) for f in site.rglob('*') if f.is_file()}
    assert 'search/search_index.json' in files
    assert docs.find_leaks(site, lines=lines) == []


def test_leak_check_finds_a_planted_line(site, tmp_path):
    "The leak check can fail: a solution line planted as highlighted HTML, as notebook JSON, HTML-escaped, or in the search index."
    nb = load(NBS / '00_tensor.ipynb')
    line = max(secret_lines(nb), key=len)                 # a long solution or hidden-test line
    copy = tmp_path / 'site'
    shutil.copytree(site, copy)
    page = copy / 'index.html'
    words = ''.join(f'<span class="n">{w}</span> ' for w in line.split())
    page.write_text(page.read_text().replace('</article>', f'<pre><code>{words}</code></pre></article>'))
    book = copy / 'notebooks' / '00_tensor.ipynb'
    data = json.loads(book.read_text())
    data['cells'][-1]['source'] = ['x = 1\n', line + '\n']
    book.write_text(json.dumps(data, indent=1))
    (copy / 'escaped.html').write_text(f'<p title="{line.replace(chr(34), "&quot;")}">x</p>')
    index = copy / 'search' / 'search_index.json'
    data = json.loads(index.read_text())
    data['docs'][0]['text'] += f'<pre><code>{line}</code></pre>'
    index.write_text(json.dumps(data))
    leaks = docs.find_leaks(copy, NBS)
    assert {f for f, _, found in leaks if found == docs._squash(line)} == {
        'index.html', 'notebooks/00_tensor.ipynb', 'escaped.html', 'search/search_index.json'}
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
    nb = nbformat.from_dict(LEAKY)
    for i, c in enumerate(nb.cells):
        c['id'] = f'c{i}'
    nbformat.write(nbformat.from_dict({**nb, 'cells': [nb.cells[1]]}), nbs / 'index.ipynb')
    nbformat.write(nb, nbs / '99_leaky.ipynb')
    stage = tmp_path / 'stage'
    with pytest.raises(docs.LeakError, match='doubled_value_secret'):
        docs.build(nbs, tmp_path / 'site', tmp_path / 'cache', stage=stage)
    assert not (tmp_path / 'site').exists() and not (tmp_path / 'site.tmp').exists()
    # without the demo cell, the same module builds: the exercise shows the stub, never the body
    nb.cells = nb.cells[:4]
    nbformat.write(nb, nbs / '99_leaky.ipynb')
    docs.build(nbs, tmp_path / 'site', tmp_path / 'cache', stage=stage)
    page = (tmp_path / 'site' / '99_leaky.html').read_text()
    assert 'twice' in page and 'Two times' in page and 'doubled_value_secret' not in page
    assert 'Exercise 99.1: implement twice' in page


@pytest.mark.slow
def test_nbdev_docs_processing_publishes_no_solution(tmp_path):
    """nbdev's own docs processing (`nbdev-proc-nbs`, which `nbdev-docs` and `nbdev-preview` run before Quarto)
    writes the student version: with our `doc_procs` no solution or hidden-test line reaches `_proc/`; without
    them, nbdev would publish them (so this test can fail)."""
    def proc(with_ours: bool) -> list:
        root = tmp_path / ('ours' if with_ours else 'plain')
        shutil.copytree(NBS, root / 'nbs', ignore=shutil.ignore_patterns('[0-9][1-9]_*', '0[2-9]_*', '1*'))
        shutil.copytree(ROOT / 'tinytorch', root / 'tinytorch')
        cfg = (ROOT / 'pyproject.toml').read_text()
        if not with_ours:
            cfg = re.sub(r'^doc_procs = .*$', '', cfg, flags=re.MULTILINE)
        (root / 'pyproject.toml').write_text(cfg)
        env = {**os.environ, 'HOME': str(tmp_path / 'home')}
        subprocess.run([sys.executable, '-c', 'from nbdev.serve import proc_nbs; proc_nbs(n_workers=0)'],
                       cwd=root, env=env, check=True, capture_output=True, timeout=600)
        assert (root / '_proc' / '00_tensor.ipynb').exists()
        return docs.find_leaks(root / '_proc', root / 'nbs')
    assert proc(with_ours=True) == []
    assert any(f == '00_tensor.ipynb' for f, _, _ in proc(with_ours=False))


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


def _resolves(url: str, cache: dict) -> str:
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


@pytest.fixture(scope='module')
def browser(site, tmp_path_factory):
    _browser_or_skip()
    from playwright.sync_api import sync_playwright
    home = tmp_path_factory.mktemp('home')      # chromium writes into $HOME/.config and $HOME/.cache
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, env={**os.environ, 'HOME': str(home)})
        yield b
        b.close()


class Watch:
    "A browser context that lets only 127.0.0.1 through and records console errors and failed requests."

    def __init__(self, browser, server, **kw):
        self.external, self.errors = [], []
        self.context = browser.new_context(**kw)
        self.context.grant_permissions(['clipboard-read', 'clipboard-write'], origin=server.rstrip('/'))
        self.context.route('**/*', self._route)
        self.page = self.context.new_page()
        p, e = self.page, self.errors
        p.on('console', lambda m: e.append(f'console {m.type}: {m.text}') if m.type == 'error' else None)
        p.on('pageerror', lambda x: e.append(f'page error: {x}'))
        p.on('requestfailed', self._failed)
        p.on('response', lambda r: e.append(f'HTTP {r.status}: {r.url}') if r.status >= 400 else None)

    def _failed(self, request):
        """A failed request is an error, except one the browser cancelled itself (net::ERR_ABORTED: the page moved
        on before, say, the favicon arrived, as happens on a busy machine) whose URL the site does serve."""
        if 'ERR_ABORTED' in (request.failure or '') and urlparse(request.url).hostname == '127.0.0.1':
            try:
                with urllib.request.urlopen(request.url, timeout=30) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
        self.errors.append(f'request failed: {request.url} ({request.failure})')

    def _route(self, r):
        if urlparse(r.request.url).hostname == '127.0.0.1' or r.request.url.startswith(('data:', 'blob:')):
            r.continue_()
        else:
            self.external.append(r.request.url)
            r.abort()

    def open(self, url):
        self.page.goto(url, wait_until='load')
        self.page.wait_for_function("document.documentElement.dataset.mathTypeset === 'true'", timeout=15000)
        self.page.evaluate('document.fonts.ready')

    def close(self):
        self.context.close()
        assert not self.external, f'requests outside 127.0.0.1: {self.external}'


PAGE_STATE = """() => {
    const main = document.querySelector('article.md-content__inner');
    const raw = [];
    const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        const el = n.parentElement;
        if (!el.closest('pre, code, script, style, .katex') && /\\$|\\\\(frac|partial|mathbb|sum)/.test(n.textContent))
            raw.push(n.textContent.trim().slice(0, 80));
    }
    const href = (sel) => { const a = document.querySelector(sel); return a ? a.href : null; };
    return {
        title: document.title,
        h1: (main.querySelector('h1') || {}).textContent || '',
        text: main.innerText.length,
        imgs: [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
        math: document.querySelectorAll('.arithmatex').length,
        typeset: document.querySelectorAll('.arithmatex > .katex, .arithmatex > .katex-display').length,
        katexErrors: document.querySelectorAll('.katex-error').length,
        katexFont: document.fonts.check('16px KaTeX_Main'),
        raw: raw.concat([...document.querySelectorAll('.md-nav__link')].map(a => a.textContent)
                               .filter(t => t.includes('\\\\(')).map(t => 'nav: ' + t.trim())),
        links: [...document.querySelectorAll('a[href]')].map(a => a.href),
        prev: href('a.md-footer__link--prev'),
        next: href('a.md-footer__link--next'),
        wide: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    };
}"""


@pytest.mark.slow
def test_every_page_on_desktop_and_phone(site, pages, order, server, browser):
    """Each page, at 1280 x 900 and at 390 x 844: it renders with its title, every equation is typeset by KaTeX
    (no raw TeX left), every image loads, previous/next links follow the course order, every internal link
    resolves, nothing is requested outside 127.0.0.1, the console is clean; on the phone, no page scrolls
    sideways. Screenshots of each page."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems, link_cache = [], {}
    titles = {p['file']: p['title'] for p in pages.values()}
    for label, viewport in (('desktop', {'width': 1280, 'height': 900}), ('phone', {'width': 390, 'height': 844})):
        w = Watch(browser, server, viewport=viewport, device_scale_factor=1)
        for i, file in enumerate(order):
            w.errors.clear()
            url = urljoin(server, file)
            w.open(url)
            s = w.page.evaluate(PAGE_STATE)
            where = f'{label} {file}:'
            if file in titles and (s['h1'].strip().rstrip('¶').strip() != titles[file]
                                   or not s['title'].startswith(titles[file])):
                problems.append(f"{where} title {s['title']!r} / h1 {s['h1']!r}, expected {titles[file]!r}")
            if s['text'] < 300:
                problems.append(f"{where} only {s['text']} characters of content")
            problems += [f"{where} image {m['src']} did not load" for m in s['imgs'] if not m['ok']]
            if s['typeset'] != s['math'] or s['katexErrors']:
                problems.append(f"{where} {s['math']} equations, {s['typeset']} typeset, {s['katexErrors']} KaTeX errors")
            if s['math'] and not s['katexFont']:
                problems.append(f'{where} the KaTeX fonts did not load')
            problems += [f'{where} raw TeX on the page: {r!r}' for r in s['raw']]
            want_prev = urljoin(server, order[i - 1]) if i else None
            want_next = urljoin(server, order[i + 1]) if i + 1 < len(order) else None
            if (s['prev'], s['next']) != (want_prev, want_next):
                problems.append(f"{where} previous/next {s['prev']}, {s['next']}; expected {want_prev}, {want_next}")
            if label == 'phone' and s['wide'] > 0:
                problems.append(f"{where} scrolls sideways by {s['wide']} px at 390 px")
            if label == 'desktop':
                for link in s['links']:
                    if urlparse(link).hostname == '127.0.0.1':
                        bad = _resolves(link, link_cache)
                        if bad:
                            problems.append(f'{where} link {link}: {bad}')
            problems += [f'{where} {e}' for e in w.errors]
            name = file.replace('/', '-').removesuffix('.html')
            w.page.screenshot(path=str(SHOTS / f'{name}-{label}.png'))
        w.close()
    assert not problems, '\n'.join(problems)
    assert (SHOTS / '00_tensor-phone.png').stat().st_size > 10_000


@pytest.mark.slow
def test_search_menu_dark_mode_and_copy(server, browser, pages):
    """Search for "embedding" lists module 04 and its hit opens it; on a phone the menu button opens the module
    list; the palette toggle switches to dark mode and back; a copy button puts its block's code on the clipboard."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    w = Watch(browser, server, viewport={'width': 1280, 'height': 900})
    p = w.page
    w.open(urljoin(server, 'index.html'))
    p.locator('input.md-search__input').click()
    p.wait_for_function("!/Initializing/.test(document.querySelector('.md-search-result__meta').textContent)",
                        timeout=60000)                 # the search worker has loaded the index
    p.locator('input.md-search__input').press_sequentially('embedding', delay=50)   # typed, as a reader does
    hit = p.locator('.md-search-result__list a[href*="04_embeddings.html"]').first
    hit.wait_for(state='visible', timeout=30000)
    p.screenshot(path=str(SHOTS / 'search-embedding.png'))
    hit.click()
    p.wait_for_url('**/04_embeddings.html*')
    assert p.locator('h1').first.inner_text().startswith(pages['04_embeddings']['title'])

    # dark mode: the toggle switches Material's color scheme, and back
    w.open(urljoin(server, '00_tensor.html'))
    scheme = lambda: p.evaluate("document.body.getAttribute('data-md-color-scheme')")  # noqa: E731
    assert scheme() == 'default'
    p.locator('form[data-md-component="palette"] label:visible').first.click()
    p.wait_for_function("document.body.getAttribute('data-md-color-scheme') === 'slate'")
    bg = p.evaluate("getComputedStyle(document.body).backgroundColor")
    p.screenshot(path=str(SHOTS / '00_tensor-dark.png'))
    p.locator('form[data-md-component="palette"] label:visible').first.click()
    p.wait_for_function("document.body.getAttribute('data-md-color-scheme') === 'default'")
    assert bg != p.evaluate("getComputedStyle(document.body).backgroundColor")

    # copy: the first code block's button puts exactly its code on the clipboard
    block = p.locator('article .highlight pre').first
    block.scroll_into_view_if_needed()
    block.hover()
    code = block.locator('code').inner_text()
    block.locator('button[data-md-type="copy"]').click()
    copied = p.evaluate('navigator.clipboard.readText()')
    assert copied.strip() == code.strip() and len(code.strip()) > 10
    errors = list(w.errors)
    w.close()

    # phone: the menu button opens the drawer, whose Modules section lists every module; a tap opens one
    w = Watch(browser, server, viewport={'width': 390, 'height': 844}, has_touch=True, is_mobile=True)
    p = w.page
    w.open(urljoin(server, 'index.html'))
    on_screen = ('(el) => { const r = el.getBoundingClientRect(); if (!r.width || !r.height) return false; '
                 'const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2); '
                 'return top !== null && (el === top || el.contains(top)); }')   # really shown, on top
    link = lambda file: p.locator(f'nav.md-nav--primary a[href="{file}"]').first  # noqa: E731
    menu = p.locator('label.md-header__button[for="__drawer"]')
    assert menu.is_visible()
    assert not link('04_embeddings.html').evaluate(on_screen), 'the module list is on screen before the menu is opened'
    menu.click()
    p.locator('nav.md-nav--primary label.md-nav__link:has-text("Modules")').first.click()
    p.wait_for_timeout(500)                                   # the drawer slides in
    for page in pages.values():
        if page['module']:
            assert link(page['file']).evaluate(on_screen), f"{page['file']} is not in the opened menu"
    p.screenshot(path=str(SHOTS / 'phone-menu.png'))
    p.locator('nav.md-nav--primary a[href="04_embeddings.html"]').first.click()
    p.wait_for_url('**/04_embeddings.html*')
    errors += w.errors
    w.close()
    assert not errors, errors
