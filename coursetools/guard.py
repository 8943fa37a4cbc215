"""Runs inside the grading kernel: before every graded cell, put back what the course defined.

The autograder (`coursetools.autograding.GradingExecute`) inserts three kinds of cells, and removes them after:

- `setup()` first: a snapshot of `builtins`, of the modules the tests rely on (numpy, fastcore.test, ...) and of
  IPython's input transformers and event callbacks;
- `capture(globals(), names)` after each locked given cell: the objects those names are bound to now;
- `restore(globals())` before each graded cell: the snapshot and the captured names are put back, so that a
  student's cell that redefines `test_eq` or patches `fastcore.test`, `numpy` or `builtins` does not change what
  the tests check.

This is a guard against accidents and casual cheating, not a sandbox: the grader also flags such cells (see
`coursetools.autograding.scan_cell`) for the instructor to look at. The sandbox is coursetools/sandbox.py.

`setup()` also installs an audit hook (PEP 578; no code can remove one) that records what the submission tried:
opening or writing a path outside its folder, connecting a socket, opening a database, starting processes,
adding its own audit hook (refused). The records go, one JSON line each, to a pipe whose reading end only the
grader holds (`TINYTORCH_AUDIT_FD`): what was written cannot be taken back, and every line becomes a flag, so
writing into the pipe can only add flags. `finish()`, the last cell, writes an end marker. Limits: a
submission can stop later records (close the descriptor, patch memory with ctypes) and forge the marker if it
knows this design; what it tried before that stays recorded. The sandbox makes the attempts fail either way.
"""
import builtins
import importlib
import json
import os
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
    _audit()
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


# ---------------------------------------------------------------------------------------------- audit hook

AUDIT_FD = 'TINYTORCH_AUDIT_FD'
END = 'end'
_READ_OK = ('/usr/', '/etc/', '/proc/', '/dev/', '/sys/', '/lib', '/bin/', '/sbin/')
_EVENTS = frozenset({'open', 'socket.connect', 'socket.sendto', 'socket.sendmsg', 'sqlite3.connect',
                     'sqlite3.connect/handle', 'os.fork', 'os.forkpty', 'os.posix_spawn', 'os.spawn', 'os.system',
                     'os.exec', 'subprocess.Popen', 'pty.spawn', 'os.remove', 'os.rename', 'os.rmdir', 'os.mkdir',
                     'os.symlink', 'os.link', 'os.truncate', 'os.chmod', 'os.chown', 'os.utime', 'shutil.rmtree',
                     'shutil.copyfile', 'shutil.move', 'sys.addaudithook', 'object.__setattr__',
                     'object.__delattr__'})
_WRITES = frozenset({'os.remove', 'os.rename', 'os.rmdir', 'os.mkdir', 'os.symlink', 'os.link', 'os.truncate',
                     'os.chmod', 'os.chown', 'os.utime', 'shutil.rmtree', 'shutil.copyfile', 'shutil.move'})
_PROCESSES = frozenset({'os.fork', 'os.forkpty', 'os.posix_spawn', 'os.spawn', 'os.system', 'os.exec',
                        'subprocess.Popen', 'pty.spawn'})
_hook = []


def _audit():
    "Install the audit hook once, writing to the descriptor in TINYTORCH_AUDIT_FD (nothing when there is none)."
    fd = os.environ.pop(AUDIT_FD, None)
    if _hook or fd is None:
        return
    fd = int(fd)
    os.set_blocking(fd, False)                  # a full pipe drops records instead of stopping the kernel
    roots = [os.getcwd()] + [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)] + \
        [os.path.dirname(os.path.dirname(os.path.realpath(__file__)))]
    okay = tuple(r.rstrip('/') + '/' for r in roots) + _READ_OK
    mine = tuple(p.rstrip('/') + '/' for p in (os.getcwd(), os.environ.get('HOME') or os.getcwd(),
                                                os.environ.get('TMPDIR') or '/tmp'))

    def where(path, _str=str, _fspath=os.fspath, _join=os.path.join, _norm=os.path.normpath, _cwd=os.getcwd):
        path = _fspath(path)
        path = path.decode(errors='replace') if isinstance(path, bytes) else _str(path)
        return _norm(_join(_cwd(), path))

    def hook(event, args, _events=_EVENTS, _writes=_WRITES, _procs=_PROCESSES, _okay=okay, _mine=mine,
             _where=where, _write=os.write, _dumps=json.dumps, _fd=fd, _int=int, _isinstance=isinstance,
             _file=__file__, _getattr=getattr, _isdir=os.path.isdir, _dirname=os.path.dirname, _repr=repr,
             _ipykernel='/ipykernel_'):   # ipykernel's names of cells (tracebacks look them up)
        if event not in _events:
            return
        if event in ('object.__setattr__', 'object.__delattr__'):    # the hook's code and defaults (and the
            code = _getattr(args[0], '__code__', None) if args else None  # guard's) are not to be changed
            if _getattr(code, 'co_filename', None) == _file:
                raise RuntimeError("the grader's guard cannot be changed")
            return
        if event == 'sys.addaudithook':
            _write(_fd, b'{"event": "sys.addaudithook"}\n')
            raise RuntimeError('no audit hooks while grading')          # refused: the hook is not added
        try:
            record = None
            if event == 'open':
                path, mode, flags = args
                if _isinstance(path, _int) or path is None:
                    return
                writing = (mode is not None and any(c in mode for c in 'wax+')) or \
                    (mode is None and _int(flags or 0) & 0o1103)         # O_WRONLY | O_RDWR | O_CREAT | O_TRUNC
                full = _where(path)
                # its own folders, where they exist (the course may live under /tmp: not in the sandbox's /tmp)
                own = (full + '/').startswith(_mine) and (_isdir(_dirname(full)) or _ipykernel in full)
                if writing and not own and full != '/dev/null':
                    record = {'event': 'write', 'path': full}
                elif not writing and not own and not (full + '/').startswith(_okay):
                    record = {'event': 'open', 'path': full}
            elif event in _writes:
                full = _where(args[0]) if args and args[0] is not None and not _isinstance(args[0], _int) else ''
                if full and not ((full + '/').startswith(_mine) and _isdir(_dirname(full))):
                    record = {'event': 'write', 'path': full, 'how': event}
            elif event.startswith('sqlite3.connect'):
                db = args[0] if args else ''
                if _isinstance(db, (str, bytes)) and db not in (':memory:', b':memory:', '') and \
                        not ((_where(db) + '/').startswith(_mine) and _isdir(_dirname(_where(db)))):
                    record = {'event': 'database', 'path': _where(db)}
            elif event.startswith('socket.'):
                record = {'event': 'connect', 'address': repr(args[1] if len(args) > 1 else args)[:200]}
            elif event in _procs:
                what = args[1] if event == 'subprocess.Popen' and len(args) > 1 else args[0] if args else ''
                record = {'event': 'process', 'how': event, 'what': _repr(what)[:120]}
            if record is not None:
                _write(_fd, (_dumps(record) + '\n').encode())
        except (BlockingIOError, BrokenPipeError):
            pass
        except Exception:
            pass

    _hook.append(hook)
    _hook.append(fd)
    sys.addaudithook(hook)


def withheld(module: str, name: str):
    """A module withheld by the sandbox (a stub of coursetools/sandbox.py) was asked for `name`: recorded, which
    flags the submission."""
    if len(_hook) == 2:
        try:
            os.write(_hook[1], json.dumps({'event': 'withheld', 'module': str(module)[:80],
                                          'name': str(name)[:80]}).encode() + b'\n')
        except OSError:
            pass


def finish():
    "The last cell: the end marker (a missing one means the channel was closed, or the kernel stopped early)."
    if len(_hook) == 2:
        try:
            os.write(_hook[1], json.dumps({'event': END}).encode() + b'\n')
        except OSError:
            pass
