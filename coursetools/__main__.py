"""`python -m coursetools <command>`: release, docs."""
import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m coursetools', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    rel = sub.add_parser('release', help='write the student notebooks')
    rel.add_argument('--nbs', default='nbs')
    rel.add_argument('--out', default='_release')
    doc = sub.add_parser('docs', help='build the student docs site (no solutions, no hidden tests)')
    doc.add_argument('--nbs', default='nbs')
    doc.add_argument('--out', default='_site')
    doc.add_argument('--cache', default='_docs_cache', help='executed notebooks, keyed by content hash')
    doc.add_argument('--no-execute', action='store_true', help='cheap mode: no notebook is run, no outputs shown')
    doc.add_argument('--jobs', type=int, default=2, help='notebooks executed at once')
    doc.add_argument('--strict', action='store_true', help='fail when a notebook cannot be staged')
    args = parser.parse_args(argv)
    if args.command == 'release':
        from .release import release
        for p in release(args.nbs, args.out):
            print(f'wrote {p}')
    elif args.command == 'docs':
        from .docs import build
        report = build(args.nbs, args.out, args.cache, execute=not args.no_execute, jobs=args.jobs,
                       strict=args.strict)
        for page in report['pages']:
            print(f"{report['out']}/{page['file']}: {page['title']} ({page['figures']} figures)")


if __name__ == '__main__':
    main()
