"""Measuring code for the core and the kernels (not part of a sampling run; nothing shipped imports it).

    python -m rettention.bench [--shapes ...]     the kernel benchmark on a CUDA GPU (kernels.py)
    python -m rettention.bench report            the core's numbers on any machine (report.py)
"""
