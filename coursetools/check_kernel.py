"""Clearer failure messages in the kernel of `tinytorch check` (`install()` runs before the student's notebook).

fastcore's `test` (under `test_eq`, `test_close`, `test_ne`, ...) prints both values on two lines and does not say
which is which. Installed, it makes the same comparison and, when that fails, names the two expressions as written
in the cell and says which value is the student's (the first argument: the course writes `test_eq(yours,
expected)`, and tests/test_course.py checks that no graded cell puts a literal first) and which the expected one,
with the shapes when they differ, else the largest difference. `test_fail` says what it expected when the error's
message is not the right one (fastcore's assertion has no message there). Only the messages change: what passes
and what fails stays the same.
"""
import ast
import sys

WORDS = {'==': 'not equal', 'close': 'not close enough'}


def show(x) -> str:
    "A value as the message shows it: NumPy arrays summarised, anything cut at 800 characters."
    try:
        import numpy as np
        with np.printoptions(threshold=40, edgeitems=3, precision=6, linewidth=100):
            text = repr(x)
    except Exception:
        text = repr(x)
    return text if len(text) <= 800 else text[:800] + ' ...'


def written(depth: int = 1):
    "The failing `test_eq(a, b)` as written by its caller: (name, first, second) expressions, or None."
    f = sys._getframe(depth)
    while f is not None and f.f_globals.get('__name__') in ('fastcore.test', __name__):
        f = f.f_back
    try:
        import executing
        node = executing.Source.executing(f).node
        if isinstance(node, ast.Call) and len(node.args) >= 2:
            return ast.unparse(node.func), ast.unparse(node.args[0]), ast.unparse(node.args[1])
    except Exception:
        pass
    return None


def difference(a, b) -> str:
    "Where two arrays differ: their shapes, or the largest difference and its index ('' when not arrays)."
    try:
        import numpy as np
        sa, sb = getattr(a, 'shape', None), getattr(b, 'shape', None)
        if sa is None or sb is None:
            return ''
        if tuple(sa) != tuple(sb):
            return f'\nthe shapes differ: yours {tuple(sa)}, expected {tuple(sb)}'
        if np.size(a) > 1:
            d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
            i = np.unravel_index(np.nanargmax(d), d.shape)
            return (f'\nlargest difference {d[i]:.3g} at index {tuple(int(k) for k in i)}: yours '
                    f'{np.asarray(a)[i]!r}, expected {np.asarray(b)[i]!r}')
    except Exception:
        pass
    return ''


def field(label: str, value) -> str:
    "`  label: value`, or the value on its own indented lines when it takes several."
    text = show(value)
    if '\n' in text:
        return f'  {label}:\n' + '\n'.join('    ' + line for line in text.splitlines())
    return f'  {label}: {text}'


def message(a, b, cmp, cname) -> str:
    "The failure message of `test(a, b, cmp, cname)`."
    cname = cname or getattr(cmp, '__name__', 'test')
    name, ea, eb = written() or ('test', 'first argument', 'second argument')
    if cname in WORDS:
        eps = getattr(cmp, 'keywords', {}).get('eps')
        tolerance = f' (allowed difference {eps:g})' if eps is not None else ''
        return (f'{name}({ea}, {eb}): {WORDS[cname]}{tolerance}\n' + field(f'yours    ({ea})', a) + '\n'
                + field(f'expected ({eb})', b) + difference(a, b))
    return f'{name}({ea}, {eb}): {cname} failed\n' + field(ea, a) + '\n' + field(eb, b)


def install():
    "Wrap fastcore.test's `test` and `test_fail` (once per kernel)."
    try:
        import fastcore.test as ft
    except Exception:
        return
    if getattr(ft.test, 'tinytorch_check', False):
        return
    original = ft.test

    def test(a, b, cmp, cname=None):
        try:
            return original(a, b, cmp, cname)
        except AssertionError:
            pass
        raise AssertionError(message(a, b, cmp, cname)) from None

    def test_fail(f, msg='', contains='', exc=Exception, args=None, kwargs=None):
        args, kwargs = args or [], kwargs or {}
        try:
            f(*args, **kwargs)
        except exc as e:
            if contains and contains not in str(e):
                raise AssertionError(f'test_fail: expected an error whose message contains {contains!r}, '
                                     f'got {type(e).__name__}: {e}') from None
            return
        except Exception as e:
            raise AssertionError(f'test_fail: expected {exc.__name__}, got {type(e).__name__}: {e}. {msg}') from None
        raise AssertionError(f'test_fail: expected {exc.__name__} to be raised, but nothing was. {msg}')

    test.tinytorch_check = True
    test.__doc__, test_fail.__doc__ = original.__doc__, ft.test_fail.__doc__
    ft.test, ft.test_fail = test, test_fail
