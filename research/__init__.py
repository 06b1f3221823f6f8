"""camlab's research layer, run from the checkout: finished runs loaded for evaluation, the WSOL and semantic-segmentation reports, the comparisons over methods, extractors and seeds, and the benchmark.

It reads the lab's modules (``model``, ``train``, ``dataloader``) and is read by the command
lines (``iou.py``, ``bench.py``); it is not part of the installable ``camlab`` package.
"""
