"""`python -m coursetools <command>`: release."""
import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m coursetools', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    rel = sub.add_parser('release', help='write the student notebooks')
    rel.add_argument('--nbs', default='nbs')
    rel.add_argument('--out', default='_release')
    args = parser.parse_args(argv)
    if args.command == 'release':
        from .release import release
        for p in release(args.nbs, args.out):
            print(f'wrote {p}')


if __name__ == '__main__':
    main()
