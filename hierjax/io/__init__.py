"""Tables in and out, the ``hierjax`` command line and the figures: the outermost layer.

Imports: anything in hierjax; pyarrow, pandas, tqdm and matplotlib lazily, inside the
functions that need them.
"""
