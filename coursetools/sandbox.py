"""The grading sandbox: every grading kernel runs inside bubblewrap (`bwrap`), seeing nothing but the Python
environment and a private scratch copy of its own submission folder.

What the kernel sees (everything else is simply not mounted):

- read-only: the system directories (`/usr`, `/etc`, `/bin`, `/lib*`, `/sbin`), the Python installation
  (`sys.base_prefix`, e.g. pyenv's under the home directory), the course repository's venv (`sys.prefix`), and
  the folders of the `tinytorch` and `coursetools` packages (an editable install points into the repository:
  those two folders are mounted, not the repository, so `nbs/`, `tests/`, `_docs_cache/`, `tinytorch.egg-info/`
  and the rest of the home are absent; the venv holds only the editable install's path finder and metadata);
- of the reference `tinytorch` package (a kernel imports it so that module N is graded on its own, not on the
  student's earlier modules), only what the graded notebook may use (`package_view`): the graded module and
  every later one (course order; nbdev's header in each file names its notebook) are replaced by stubs that
  define nothing, so a solution cell cannot import, read, `exec` or `inspect` the reference solutions of what it
  is graded on. A stub imports (so `tinytorch/__init__.py`'s `from .attention import *` imports nothing and the
  modules before still import), and any name asked of it raises an ImportError ("tinytorch.attention is withheld
  while 06_attention is graded: your notebook's own cells define it") and is flagged through the audit channel.
  The package's folder is a read-only tmpfs holding its top-level `.py` files (the withheld ones as stubs; a copy
  of one under another name, which has its header, is a stub too, and so is any `.py` file without nbdev's header
  except `__init__.py` and `_modidx.py`: what is not known to come earlier is withheld; other files, subfolders such as
  `.ipynb_checkpoints/` and backups are left out) and a `__pycache__` with only the kept modules' compiled files
  (no `.pyc` of a withheld module to `marshal.load`);
- read-write: a scratch copy of the grading folder (its working directory, discarded afterwards), a small
  private `/tmp` (tmpfs), and the folder holding the kernel's ZeroMQ sockets;
- `/proc`, a minimal `/dev`; new PID, IPC, UTS, cgroup and network namespaces (no network at all, not even the
  host's loopback).

The course directory (`source/`, `release/`, `gradebook.db`, other students' folders, the config), the
repository and the instructor's home are not in the sandbox, so a submission can neither read the hidden tests
from them nor write to them. What stays readable: the reference solutions of the modules *before* the graded one
(a submission that prints them has them scrubbed from its outputs and is flagged, coursetools/autograding.py),
and whatever else is installed in the venv (torch, if the instructor installed it, is a library a submission may
import like numpy). A `.py` file in the package's folder without nbdev's header (say, a stray copy of a module's
solutions) is withheld too: only `__init__.py` and `_modidx.py` are kept without one. The view's `__init__.py` is
the package's with a module `__getattr__` added, so that `from tinytorch import X` of a withheld X raises an
ImportError naming X's module and why, instead of Python's "cannot import name".

**How the grader talks to the kernel.** Jupyter's default transport is TCP on 127.0.0.1, but the sandbox has its
own empty network namespace, so the grader could not reach those ports (and sharing the host's network would
let a submission connect to any local service). The kernel uses ZeroMQ's `ipc` transport instead: Unix sockets
in a private socket folder that is bind-mounted into the sandbox at the same path; the grader connects to the
same files from outside. The connection file lives there too.

**Limits.** Memory: RLIMIT_AS (virtual memory; a 20 GB allocation fails with MemoryError, the notebook goes on).
Processes: RLIMIT_NPROC. Linux does not enforce RLIMIT_NPROC for root, and counts it per real user: so when
the grader runs as root, bwrap runs without a user namespace, keeps only CAP_SETUID/CAP_SETGID, and the kernel
drops to an unused unprivileged uid of its own (`setpriv`), whose process count is the sandbox's alone; when
the grader runs as a normal user, the kernel keeps that user's uid and the limit is set to the user's current
number of processes plus `max_processes` (the instructor's other processes share that count). Files: RLIMIT_FSIZE
per file, and a size-limited /tmp. Time: the per-cell and per-notebook timeouts of `GradingExecute`; the
sandbox dies with the grader (`--die-with-parent`).

`UNSAFE_NO_SANDBOX=1` in the environment grades without the sandbox (every submission is then flagged).

`coursetools.autograding.GradingExecute` uses this module for every kernel, so any process that runs nbgrader's
autograde with the course's config (the local process pool, a Dask worker) grades in the sandbox; call
`check()` (or `coursetools.course.preflight`) once before grading, on each machine that grades.
"""
import ast
import copy
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

OPT_OUT = 'UNSAFE_NO_SANDBOX'
INSTALL = 'install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`)'
UNSAFE_FLAG = 'graded without a sandbox (UNSAFE_NO_SANDBOX=1): the submission ran with the grader\'s rights'
UID_BASE = 2_000_000_000      # root: each kernel runs as an unused uid of its own (no passwd entry needed)


class SandboxUnavailable(RuntimeError):
    "bwrap is missing or cannot start a sandbox here (and the instructor did not opt out)."


def disabled() -> bool:
    "True when the instructor opted out of the sandbox (UNSAFE_NO_SANDBOX=1)."
    return os.environ.get(OPT_OUT, '').strip() not in ('', '0')


def bwrap() -> str:
    "The bwrap executable, or '' when it is not installed."
    return shutil.which('bwrap') or ''


def _package_dir(name: str):
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).resolve().parent if spec and spec.origin else None


def readable() -> list:
    "The host paths a grading kernel reads: the system, the Python installation and venv, the two packages."
    paths = [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()]
    paths += [p for p in (_package_dir('tinytorch'), _package_dir('coursetools')) if p]
    exe = Path(sys.executable).resolve().parent
    if not any(exe == p or p in exe.parents for p in paths):
        paths.append(exe)
    return list(dict.fromkeys(paths))


# nbdev's header of an exported module names the notebook it comes from.
_EXPORTED_FROM = re.compile(r'^# AUTOGENERATED! DO NOT EDIT! File to edit: (?:\S*/)?([^/\s]+)\.ipynb', re.MULTILINE)
OWN = "your notebook's own cells define it"
LATER = 'it comes after {notebook} in the course (a module uses only the ones before it)'
UNKNOWN = 'no notebook exported it (no nbdev header), so nothing says it comes before {notebook}'
PACKAGE_FILES = ('__init__', '_modidx')   # the package's own files without a header: kept; any other such file is not
STUB = '''"""{message}"""
# Put in place of the reference module by the grading sandbox (coursetools/sandbox.py): it defines nothing.
__all__ = []


def __getattr__(name):
    if name.startswith('__') and name.endswith('__'):      # import *, pickle, inspect: as for an empty module
        raise AttributeError(name)
    try:
        from coursetools.guard import withheld
        withheld(__name__, name)                            # the grader flags the attempt
    except ImportError:
        pass
    raise ImportError(__doc__, name=__name__)
'''


INIT_GETATTR = '''

# Added by the grading sandbox (coursetools/sandbox.py): a name from a withheld module says why it is missing.
_WITHHELD = {names!r}


def __getattr__(name):
    if name not in _WITHHELD:
        raise AttributeError(f"module {{__name__!r}} has no attribute {{name!r}}")
    try:
        from coursetools.guard import withheld
        withheld(__name__, name)                            # the grader flags the attempt
    except ImportError:
        pass
    raise ImportError(f"{{name}} comes from {{_WITHHELD[name]}}", name=__name__)
'''


def public_names(path) -> list:
    "The names a module file exports: its literal `__all__` (nbdev writes one), else its public top-level names."
    try:
        tree = ast.parse(Path(path).read_text(encoding='utf-8'))
    except (OSError, SyntaxError, ValueError):
        return []
    names = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == '__all__' for t in node.targets):
            try:
                return [n for n in ast.literal_eval(node.value) if isinstance(n, str)]
            except ValueError:
                pass
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith('_'):
            names.append(node.name)
    return names


def exported_from(path):
    "The notebook (its stem) that nbdev exported the file `path` from, read from its header; None for other files."
    try:
        with open(path, 'rb') as f:
            head = f.read(4096).decode('utf-8', errors='replace')
    except OSError:
        return None
    m = _EXPORTED_FROM.search(head)
    return m.group(1) if m else None


def exported_modules(package_dir) -> dict:
    "{module: the notebook (stem) it is exported from} for the package's modules that nbdev wrote, in course order."
    found = {p.stem: exported_from(p) for p in Path(package_dir).glob('*.py')}
    return dict(sorted(((m, nb) for m, nb in found.items() if nb), key=lambda kv: (kv[1], kv[0])))


def package_view(package_dir, module: str, notebook: str, folder) -> tuple:
    """What a grading kernel sees of the reference package while `notebook` (e.g. '06_attention', whose
    `#| default_exp` is `module`) is graded: its top-level modules, except that `module` and every module exported
    from a later notebook (course order: the notebooks' names; nbdev's header of each file names its notebook)
    are replaced by stubs that define nothing (importing works, so `tinytorch/__init__.py`'s `from .x import *`
    imports nothing from them; any name raises an ImportError saying why); `__pycache__` holds only the
    compiled files of the modules kept. Stubs and that `__pycache__` are written into `folder`.

    Returns (bwrap arguments that mount this view over `package_dir` read-only, the withheld module names)."""
    pkg = Path(package_dir)
    key = exported_from(pkg / f'{module}.py') or notebook
    folder = Path(folder)
    cache = folder / '__pycache__'
    cache.mkdir(parents=True)
    args, kept, withheld, names, init = ['--perms', '0755', '--tmpfs', str(pkg)], [], [], {}, None
    for p in sorted(pkg.glob('*.py')):        # modules only: no subfolder, data file or stray copy of another kind
        name, source = p.stem, exported_from(p)
        if (name == module or (source is None and name not in PACKAGE_FILES)
                or (source is not None and key is not None and source >= key)):
            why = (OWN if name == module else UNKNOWN.format(notebook=key) if source is None
                   else LATER.format(notebook=key))
            stub = folder / p.name
            stub.write_text(STUB.format(message=f'tinytorch.{name} is withheld while {key} is graded: {why}.'))
            args += ['--ro-bind', str(stub), str(p)]
            withheld.append(name)
            for n in public_names(p):
                names.setdefault(n, f'tinytorch.{name}, which is withheld while {key} is graded: {why}.')
        elif name == '__init__' and '__getattr__' not in p.read_text(encoding='utf-8', errors='replace'):
            init = p                         # `from tinytorch import X` of a withheld X: an ImportError saying why
            args += ['--ro-bind', str(folder / p.name), str(p)]   # written below, once every name is known;
        else:                                                      # its .pyc (of the original) is left out
            args += ['--ro-bind', str(p), str(p)]
            kept.append(name)
    if init is not None:
        (folder / '__init__.py').write_text(init.read_text(encoding='utf-8')
                                            + INIT_GETATTR.format(names=dict(sorted(names.items()))))
    for pyc in sorted((pkg / '__pycache__').glob('*.pyc')) if (pkg / '__pycache__').is_dir() else []:
        if pyc.name.split('.')[0] in kept:
            shutil.copy(pyc, cache / pyc.name)
    for p in [folder, cache] + list(folder.rglob('*')):
        p.chmod(0o755 if p.is_dir() else 0o644)
    args += ['--ro-bind', str(cache), str(pkg / '__pycache__'), '--remount-ro', str(pkg)]
    return args, withheld


def _user_processes(uid: int) -> int:
    "Tasks (processes and threads: what RLIMIT_NPROC counts) of the user `uid` now."
    n = 0
    for d in Path('/proc').iterdir():
        try:
            if d.name.isdigit() and d.stat().st_uid == uid:
                n += len(os.listdir(d / 'task'))
        except OSError:
            pass
    return n


class Sandbox:
    """The bwrap command around one grading kernel. `workdir`: the scratch folder (writable, the working
    directory); `ipcdir`: the folder of the ZeroMQ sockets and the connection file (writable)."""

    def __init__(self, memory_gb: float = 4, max_processes: int = 64, max_file_mb: int = 1024, tmp_mb: int = 512):
        self.memory_gb, self.max_processes, self.max_file_mb, self.tmp_mb = memory_gb, max_processes, max_file_mb, tmp_mb
        self.root = os.geteuid() == 0
        self.uid = UID_BASE + os.getpid() % 1_000_000 if self.root else os.geteuid()
        self.view, self.withheld = [], []

    def withhold(self, module: str, notebook: str, folder):
        """Grade `notebook` (whose module is `module`) without the reference package's solutions of it and of the
        modules after it (`package_view`; stubs written into `folder`). Returns the withheld module names."""
        pkg = _package_dir('tinytorch')
        if pkg is not None and module:
            self.view, self.withheld = package_view(pkg, module, notebook, folder)
        return self.withheld

    def limits(self) -> list:
        nproc = self.max_processes if self.root else _user_processes(os.geteuid()) + self.max_processes
        return ['prlimit', f'--as={int(self.memory_gb * 2**30)}', f'--nproc={nproc}',
                f'--fsize={self.max_file_mb * 2**20}', '--core=0', '--']

    def command(self, cmd: list, workdir, ipcdir, home=None) -> list:
        """`cmd` (the kernel's command) wrapped in bwrap, the uid change (as root) and the limits; `home`: a
        writable folder for the kernel's caches (HOME, else the private /tmp)."""
        args = [bwrap(), '--die-with-parent', '--tmpfs', '/']
        for top in ('usr', 'etc', 'bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32'):
            p = Path('/', top)
            if p.is_symlink():
                args += ['--symlink', os.readlink(p), str(p)]
            elif p.is_dir():
                args += ['--ro-bind', str(p), str(p)]
        args += ['--proc', '/proc', '--dev', '/dev', '--perms', '1777', '--size', str(self.tmp_mb * 2**20),
                 '--tmpfs', '/tmp']
        writable = [Path(workdir), Path(ipcdir)] + ([Path(home)] if home else [])
        binds = readable() + writable
        parents = sorted({a for p in binds for a in p.parents if a not in (Path('/'), Path('/tmp'))},
                         key=lambda a: len(a.parts))
        for a in parents:             # bwrap would create them 0700: the kernel's uid could not walk through
            args += ['--perms', '0755', '--dir', str(a)]
        for p in readable():
            args += ['--ro-bind', str(p), str(p)]
        args += self.view                 # over the package's folder (which may lie in the venv: after it)
        for p in writable:
            args += ['--bind', str(p), str(p)]
        home = str(home or '/tmp')
        args += ['--chdir', str(workdir), '--setenv', 'TMPDIR', '/tmp',
                 '--unsetenv', 'JPY_PARENT_PID']     # ipykernel would poll a parent pid that the PID namespace hides
        args += [a for k, v in home_env(home).items() for a in ('--setenv', k, v)]
        if self.root:         # no user namespace: the uid change below must be a real one (RLIMIT_NPROC)
            args += ['--unshare-ipc', '--unshare-pid', '--unshare-net', '--unshare-uts', '--unshare-cgroup',
                     '--cap-drop', 'ALL', '--cap-add', 'CAP_SETUID', '--cap-add', 'CAP_SETGID', '--',
                     'setpriv', f'--reuid={self.uid}', f'--regid={self.uid}', '--clear-groups',
                     '--inh-caps=-all', '--bounding-set=-all']
        else:                 # a user namespace (bwrap's default when unprivileged): no capabilities at all
            args += ['--unshare-all', '--']
        return args + self.limits() + list(cmd)

    def prepare(self, *paths):
        "Give the sandbox's uid its writable folders (as root; a normal user owns them already)."
        if not self.root:
            return
        for top in paths:
            os.chown(top, self.uid, self.uid)
            os.chmod(top, 0o755)       # bwrap enters the working directory as root without CAP_DAC_OVERRIDE
            for dirpath, dirnames, filenames in os.walk(top):
                for n in dirnames + filenames:
                    os.chown(os.path.join(dirpath, n), self.uid, self.uid, follow_symlinks=False)


def home_env(home) -> dict:
    "A grading kernel's home (caches, IPython's history): the same in and out of the sandbox."
    return {'HOME': str(home), 'MPLCONFIGDIR': os.path.join(home, 'mpl'), 'IPYTHONDIR': os.path.join(home, 'ipython')}


def seed_home(home):
    """Copy the grader's matplotlib font list into a kernel's fresh home, so that it is not rebuilt (a scan of
    every font) for each submission."""
    import matplotlib
    cache = Path(matplotlib.get_cachedir())
    found = sorted(cache.glob('fontlist-v*.json'))
    if not found:
        import matplotlib.font_manager  # noqa: F401  (builds the font list)
        found = sorted(cache.glob('fontlist-v*.json'))
    (Path(home) / 'mpl').mkdir(parents=True, exist_ok=True)
    for f in found[-1:]:
        shutil.copy(f, Path(home) / 'mpl' / f.name)


def check(sandbox: Sandbox = None, timeout: float = 120) -> str:
    """Why grading kernels cannot run in the sandbox on this machine ('' when they can): bwrap missing, or the
    sandbox cannot start Python with the grading packages (`tinytorch` as a kernel grading the first module sees
    it: every module withheld)."""
    if not bwrap():
        return f'bwrap (bubblewrap) is not installed: {INSTALL}'
    sandbox = copy.copy(sandbox) if sandbox else Sandbox()
    with tempfile.TemporaryDirectory(prefix='tt-check-') as tmp:
        work, ipc = Path(tmp, 'work'), Path(tmp, 'ipc')
        work.mkdir(), ipc.mkdir()
        sandbox.prepare(work, ipc)
        pkg = _package_dir('tinytorch')
        modules = exported_modules(pkg) if pkg else {}
        if modules:             # as when the first module is graded: every module withheld, the package imports
            first = next(iter(modules))
            sandbox.withhold(first, modules[first], Path(tmp, 'withheld'))
        code = 'import ipykernel, numpy, tinytorch, coursetools.guard; open("ok", "w").write("ok")'
        try:
            r = subprocess.run(sandbox.command([sys.executable, '-c', code], work, ipc), capture_output=True,
                               text=True, stdin=subprocess.DEVNULL, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f'bwrap could not start a sandbox ({e}); check that bubblewrap works here: {INSTALL}'
        if r.returncode != 0 or not (work / 'ok').exists():
            err = (r.stderr.strip().splitlines() or [f'exit status {r.returncode}'])[-1]
            return f'bwrap could not start a sandbox ({err}); check that bubblewrap works here: {INSTALL}'
    return ''


def scratch():
    """A private folder with `work/` (the kernel's copy of the grading folder), `ipc/` (its sockets) and `home/`
    (its caches)."""
    base = tempfile.gettempdir()
    if len(base) > 40:                # Unix socket paths are limited to ~107 bytes
        base = '/tmp'
    top = Path(tempfile.mkdtemp(prefix='tt-', dir=base))
    for sub in ('work', 'ipc', 'home'):
        (top / sub).mkdir()
    seed_home(top / 'home')
    return top


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel runs in `sandbox` (set before starting), with ZeroMQ's ipc transport in
    `ipcdir` (see the module's docstring for why), and `pass_fds` handed to the kernel (the audit channel)."""

    def __init__(self, *args, sandbox: Sandbox = None, workdir=None, ipcdir=None, home=None, pass_fds=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.sandbox, self.workdir, self.ipcdir, self.home = sandbox, workdir, ipcdir, home
        self.pass_fds = tuple(pass_fds)
        if sandbox is not None:
            self.transport = 'ipc'
            self.ip = str(Path(ipcdir) / 'k')
            self.connection_file = str(Path(ipcdir) / 'kernel.json')

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        if self.sandbox is None:
            return cmd
        self.sandbox.prepare(self.ipcdir)     # the connection file was written just before (0600, the grader's)
        # Interrupt by a message on the control channel (ipykernel then signals itself): a SIGINT sent to the
        # process group would hit bwrap, which dies and takes the sandbox with it.
        self.kernel_spec.interrupt_mode = 'message'
        return self.sandbox.command(cmd, self.workdir, self.ipcdir, self.home)

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        if self.pass_fds:
            kw['pass_fds'] = self.pass_fds
        return await super()._async_launch_kernel(kernel_cmd, **kw)
