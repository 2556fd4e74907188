"""Files: the ground floor every layer writes and reads through.

* :mod:`atzoo.files.common` -- atomic writes (temporary file, fsync, rename), ``flatten``,
  :func:`~atzoo.files.common.load_yaml` (the one bounded YAML parser), state-dict comparison.
* :mod:`atzoo.files.safe_read` -- bounded readers of files others wrote: YAML and JSON files,
  torch pickles (``weights_only``).
* :mod:`atzoo.files.paths` -- whether an output path (``--out``, ``--json``) can be written.

These modules import nothing of atzoo but :mod:`atzoo.errors` (and each other).
"""
