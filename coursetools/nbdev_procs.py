"""nbdev export processors (configured as `export_procs` in pyproject.toml)."""
import re

_MARKER = re.compile(r'^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?', re.MULTILINE)


def strip_solution_markers(cell):
    "Drop nbgrader's solution markers from exported code, so the package reads as plain Python."
    if cell.cell_type == 'code' and 'SOLUTION' in cell.source:
        cell.source = _MARKER.sub('', cell.source)
