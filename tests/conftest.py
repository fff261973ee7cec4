import os
import sys

# The repository root holds the pack's packages (rettention/, kernels/, nodes/).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
