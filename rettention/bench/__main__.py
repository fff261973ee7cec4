"""``python -m rettention.bench [report] ...``: the kernel benchmark, or with ``report`` the core's numbers."""
import sys

from . import kernels, report

if sys.argv[1:2] == ["report"]:
    report.main(sys.argv[2:])
else:
    kernels.main(sys.argv[1:])
