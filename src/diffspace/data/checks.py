"""Checks shared by the data generators (toy.py, gmm.py, shapes.py) and the configs that feed them; here,
not in one of them, so that each can import it without an import cycle (toy.py imports gmm.py)."""

from numbers import Integral

from diffspace.types import UserError


def check_count(n, who: str, what: str = "n, the number of points,") -> None:
    """UserError unless n (a number of points) is an integer >= 1: torch's own errors for 0, -1 or 2.5
    ('negative dimension', 'invalid combination of arguments') name neither the function nor n."""
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise UserError(f"{who}: {what} must be an integer >= 1, got {n!r}")
