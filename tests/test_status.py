"""The status flags' one description (:mod:`hierjax.status`) is what the README shows."""

from __future__ import annotations

import os

import hierjax
from hierjax.status import STATUS, STATUS_DOC, status_table, status_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_status_table_is_the_generated_one():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    assert status_table() in readme, "README's status table: paste hierjax.status.status_table()"


def test_every_flag_is_documented_once_and_bits_are_distinct():
    assert set(STATUS) == set(STATUS_DOC)
    bits = list(STATUS.values())
    assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)
    assert hierjax.STATUS is STATUS


def test_status_text_names_every_set_bit():
    assert status_text(0) == "ok"
    both = STATUS["grid_unresolved"] | STATUS["invalid"]
    assert status_text(both) == "grid_unresolved;invalid"
