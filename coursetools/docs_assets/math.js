// Typeset the math of the page (pymdownx.arithmatex's generic output: \( \) inline, \[ \] display) with the
// KaTeX shipped in assets/katex/ (no network).
document.querySelectorAll('.arithmatex').forEach(function (el) {
  var tex = el.textContent.trim();
  var display = tex.startsWith('\\[');
  katex.render(tex.slice(2, -2), el, {displayMode: display, throwOnError: false});
});
document.documentElement.dataset.mathTypeset = 'true';
