"""`python -m coursetools <command>`: release, docs, and the instructor's term (init, collect, autograde, feedback,
grades; see coursetools/course.py)."""
import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m coursetools', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    rel = sub.add_parser('release', help='write the student kit: notebooks, package with stubs, `tinytorch` command')
    rel.add_argument('--nbs', default='nbs')
    rel.add_argument('--out', default='_release')
    doc = sub.add_parser('docs', help='build the student docs site (no solutions, no hidden tests)')
    doc.add_argument('--nbs', default='nbs')
    doc.add_argument('--out', default='_site')
    doc.add_argument('--cache', default='_docs_cache', help='executed notebooks, keyed by content hash')
    doc.add_argument('--no-execute', action='store_true', help='cheap mode: no notebook is run, no outputs shown')
    doc.add_argument('--jobs', type=int, default=2, help='notebooks executed at once')
    doc.add_argument('--strict', action='store_true', help='fail when a notebook cannot be staged')
    ini = sub.add_parser('init', help='create a course directory: nbgrader config, gradebook, assignments, kit')
    ini.add_argument('course', help='the course directory to create (or update)')
    ini.add_argument('--nbs', default='nbs')
    ini.add_argument('--timeout', type=int, help='seconds per cell when autograding (default: 120)')
    col = sub.add_parser('collect', help='copy an LMS export (one folder per student) into submitted/')
    col.add_argument('course')
    col.add_argument('assignment', help='e.g. 00_tensor')
    col.add_argument('folder', help='the export: one folder per student, holding the notebook (or a zip)')
    col.add_argument('--id-regex', help='regex whose first group is the student id in a folder name')
    ag = sub.add_parser('autograde', help='autograde every submission of an assignment, on Dask')
    ag.add_argument('course')
    ag.add_argument('assignment')
    ag.add_argument('--scheduler', help='address of a running Dask scheduler, e.g. tcp://host:8786 (default: a '
                    'local cluster)')
    ag.add_argument('--jobs', type=int, help='local worker processes (default: all cores; 0: this process)')
    ag.add_argument('--student', action='append', help='only this student (repeatable)')
    ag.add_argument('--regrade', action='store_true', help='grade again the submissions graded before (by '
                    'default a run grades only what is new, changed, or left by an interrupted run)')
    ag.add_argument('--no-progress', action='store_true', help='no progress bar')
    fb = sub.add_parser('feedback', help='HTML feedback per student')
    fb.add_argument('course')
    fb.add_argument('assignment')
    gr = sub.add_parser('grades', help='grades CSV: one column per exercise, totals, flags')
    gr.add_argument('course')
    gr.add_argument('--out', help='default: <course>/grades.csv')
    bn = sub.add_parser('grading-bench', help='seconds per submission per module, and the parallel speed-up')
    bn.add_argument('--nbs', default='nbs')
    bn.add_argument('--modules', nargs='*', help='e.g. 00 01 (default: all)')
    bn.add_argument('--students', type=int, default=4)
    bn.add_argument('--jobs', type=int, nargs='+', default=[1, 2])
    bn.add_argument('--engines', nargs='+', default=['dask'], choices=['dask', 'pool'],
                    help="'dask': autograde on a local Dask cluster; 'pool': the former process pool (baseline)")
    bn.add_argument('--repeat', type=int, default=1, help='alternate the engines this many times, keep the fastest')
    bn.add_argument('--out', help='write the figures as JSON here')
    bn.add_argument('--sandbox', type=int, default=0, metavar='ROUNDS',
                    help='instead: the cost of the sandbox, ROUNDS alternating rounds with and without it')
    args = parser.parse_args(argv)
    if args.command == 'release':
        from .release import kit_stubs, release
        out = release(args.nbs, args.out)
        stubs = kit_stubs(out)
        print(f'wrote the student kit {out}/: nbs/ ({len(list((out / "nbs").glob("*.ipynb")))} notebooks), '
              f'tinytorch/ ({sum(map(len, stubs.values()))} exercise stubs), pyproject.toml, README.md; '
              f'zipped for students: {out / "tinytorch-kit.zip"}')
    elif args.command == 'docs':
        from .docs import build
        report = build(args.nbs, args.out, args.cache, execute=not args.no_execute, jobs=args.jobs,
                       strict=args.strict)
        for page in report['pages']:
            print(f"{report['out']}/{page['file']}: {page['title']} ({page['figures']} figures)")

    elif args.command in ('init', 'collect', 'autograde', 'feedback', 'grades', 'grading-bench'):
        _check_course(args, parser)
        return _course(args)


def _check_course(args, parser):
    """The course directory and assignment a command names exist, or the command stops with a message saying what
    is there instead (not a traceback from nbgrader)."""
    from pathlib import Path
    if args.command in ('init', 'grading-bench'):
        return
    root = Path(args.course)
    if not (root / 'nbgrader_config.py').is_file():
        parser.error(f"{root} is not a course directory (it has no nbgrader_config.py): make one with "
                     f"`python -m coursetools init {root}` (make term COURSE={root})")
    if getattr(args, 'assignment', None) is not None:
        from .course import assignments
        known = assignments(root)
        if args.assignment not in known:
            parser.error(f"{root} has no assignment {args.assignment!r}; its assignments are "
                         f"{', '.join(known) or 'none'}")
    if args.command == 'collect' and not Path(args.folder).is_dir():
        parser.error(f"the export folder {args.folder} does not exist (it should hold one folder per student)")


def _course(args):
    import json
    from . import course
    if args.command == 'init':
        r = course.init(args.course, nbs=args.nbs, timeout=args.timeout)
        print(f"course directory {r['root']}: assignments {', '.join(r['assignments'])}")
        print(f"student kit: {r['kit']} (zipped: {r['zip']})")
    elif args.command == 'collect':
        for sid, r in course.collect(args.course, args.assignment, args.folder, args.id_regex).items():
            state = f"graded from {r['file']}" if r['gradable'] else 'NOT gradable'
            print(f"{sid}: {state}" + (f"  ({'; '.join(r['flags'])})" if r['flags'] else ''))
    elif args.command == 'autograde':
        from .sandbox import SandboxUnavailable
        try:
            course.autograde(args.course, args.assignment, students=args.student, jobs=args.jobs,
                             scheduler=args.scheduler, regrade=args.regrade,
                             progress=False if args.no_progress else None)
        except SandboxUnavailable as e:
            import sys
            print(e, file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    elif args.command == 'feedback':
        course.feedback(args.course, args.assignment)
    elif args.command == 'grades':
        course.grades(args.course, args.out)
    elif args.command == 'grading-bench':
        figures = course.bench(args.modules, students=args.students, jobs=tuple(args.jobs), nbs=args.nbs,
                               engines=tuple(args.engines), repeat=args.repeat, sandbox_rounds=args.sandbox)
        if args.out:
            with open(args.out, 'w') as f:
                json.dump(figures, f, indent=1)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
