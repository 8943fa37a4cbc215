// Typeset the math of the page (pymdownx.arithmatex's generic output: \( \) inline, \[ \] display) with the
// KaTeX shipped in assets/katex/ (no network).
document.querySelectorAll('.arithmatex').forEach(function (el) {
  var tex = el.textContent.trim();
  var display = tex.startsWith('\\[');
  katex.render(tex.slice(2, -2), el, {displayMode: display, throwOnError: false});
});
// Math in a heading shows in the tables of contents as \( ... \) text: typeset it there too.
document.querySelectorAll('.md-nav__link').forEach(function (a) {
  var el = a.querySelector('.md-ellipsis') || a;
  if (el.children.length || el.textContent.indexOf('\\(') < 0) return;
  el.innerHTML = el.textContent.split(/\\\(([\s\S]*?)\\\)/).map(function (part, i) {
    return i % 2 ? katex.renderToString(part, {throwOnError: false})
                 : part.replace(/[&<>]/g, function (c) { return {'&': '&amp;', '<': '&lt;', '>': '&gt;'}[c]; });
  }).join('');
});
document.documentElement.dataset.mathTypeset = 'true';
