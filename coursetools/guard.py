"""Runs inside the grading kernel: before every graded cell, put back what the course defined.

The autograder (`coursetools.autograding.GradingExecute`) inserts three kinds of cells, and removes them after:

- `setup()` first: a snapshot of `builtins`, of the modules the tests rely on (numpy, fastcore.test, ...) and of
  IPython's input transformers and event callbacks;
- `capture(globals(), names)` after each locked given cell: the objects those names are bound to now;
- `restore(globals())` before each graded cell: the snapshot and the captured names are put back, so that a
  student's cell that redefines `test_eq` or patches `fastcore.test`, `numpy` or `builtins` does not change what
  the tests check.

This is a guard against accidents and casual cheating, not a sandbox: the grader also flags such cells (see
`coursetools.autograding.scan_cell`) for the instructor to look at.
"""
import builtins
import importlib
import sys
import types

WATCHED = ('builtins', 'math', 'numpy', 'numpy.testing', 'fastcore.imports', 'fastcore.basics', 'fastcore.test')
_SKIP = {'_', '__', '___'}           # IPython's output history lives in builtins

_modules = {}                        # name -> (module, copy of its __dict__)
_functions = {}                      # id -> (function, __code__, __defaults__, __kwdefaults__)
_names = {}                          # name -> object, as the course's cells left it
_ipython = {}


def _remember(obj):
    if isinstance(obj, types.FunctionType):
        _functions[id(obj)] = (obj, obj.__code__, obj.__defaults__, obj.__kwdefaults__)


def setup():
    for name in WATCHED:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        _modules[name] = (mod, dict(mod.__dict__))
        for obj in list(mod.__dict__.values()):
            _remember(obj)
    ip = _shell()
    if ip is not None:
        _ipython.update(
            cleanup=list(ip.input_transformers_cleanup), post=list(ip.input_transformers_post),
            ast=list(ip.ast_transformers),
            events={k: list(v) for k, v in ip.events.callbacks.items()})


def capture(ns: dict, names):
    for name in names:
        if name in ns:
            _names[name] = ns[name]
            _remember(ns[name])


def restore(ns: dict):
    for name, (mod, snapshot) in _modules.items():
        d = mod.__dict__
        for key, value in snapshot.items():
            if key not in _SKIP and d.get(key, _modules) is not value:
                d[key] = value
        if sys.modules.get(name) is not mod:
            sys.modules[name] = mod
    for fn, code, defaults, kwdefaults in _functions.values():
        if fn.__code__ is not code:
            fn.__code__ = code
        if fn.__defaults__ is not defaults:
            fn.__defaults__ = defaults
        if fn.__kwdefaults__ is not kwdefaults:
            fn.__kwdefaults__ = kwdefaults
    for name, value in _names.items():
        if ns.get(name, _names) is not value:
            ns[name] = value
    ns['__builtins__'] = builtins
    ip = _shell()
    if ip is not None and _ipython:
        ip.input_transformers_cleanup[:] = _ipython['cleanup']
        ip.input_transformers_post[:] = _ipython['post']
        ip.ast_transformers[:] = _ipython['ast']
        for event, callbacks in _ipython['events'].items():
            ip.events.callbacks[event] = list(callbacks)


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()
