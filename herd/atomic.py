"""Folder replacement that never leaves a half-written folder where a reader could find it."""

import shutil
from pathlib import Path


def swap_in(tmp: Path, final: Path) -> None:
    """Replace `final` by the complete folder `tmp`; the old one is kept aside until the new is in place."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def recover(final: Path) -> None:
    """A kill between the two renames of `swap_in` leaves the previous folder aside: restore it."""
    old = final.with_name(f".{final.name}.old")
    if old.exists() and not final.exists():
        old.rename(final)
