"""Judges for `tui-align simulate`, each a different kind of preference, with its own training prompts.

Every `NAME.py` here has `judge(prompt, a, b) -> 0 | 1 | None` (and, where a person would have
to show the behaviour, `edit(prompt, reply) -> corrected reply | None`); `NAME.txt` holds its
training prompts. `bench/judges_table.py` runs them all. None of them was used to tune the defaults.
"""
