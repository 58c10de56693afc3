"""
The numerics of compute/series.py: bc's digits, exact splitting, the
rigorous range check, pi and the Euler correction.
"""

from __future__ import annotations

import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from compute.series import (
    chunkBounds, chunkRanges, eulerCorrection, formatScaled, leibnizChunk, parseScaled, referencePi,
)
from tests.compute_support import BC_PSUM

#: pi to 60 decimals, as printed everywhere.
PI60 = "3.141592653589793238462643383279502884197169399375105820974944"


def bc(start: int, stop: int, scale: int) -> str:
    out = subprocess.run(["bc"], input=BC_PSUM + f"scale={scale}\npsum({start},{stop})\n",
                         capture_output=True, text=True, check=True, env={"BC_LINE_LENGTH": "0"})
    return out.stdout


def test_chunkMatchesBcDigitForDigit():
    """leibnizChunk gives bc's psum at the same scale, for chunks starting at even and odd terms."""
    for start, stop, scale in [(0, 2000, 60), (3, 1500, 60), (1000, 1001, 30), (7, 3000, 90)]:
        assert leibnizChunk(start, stop, scale) == parseScaled(bc(start, stop, scale), scale)


@settings(max_examples=60)
@given(st.integers(0, 5000), st.integers(0, 5000), st.integers(1, 80), st.integers(1, 700))
def test_anySplitGivesTheSameSum(a, b, digits, chunk):
    """Chunk values add exactly: the sum over any chunking equals the one-piece sum."""
    terms = max(a, b)
    assert sum(leibnizChunk(x, y, digits) for x, y in chunkRanges(terms, chunk)) == leibnizChunk(0, terms, digits)


@settings(max_examples=200)
@given(st.integers(0, 10**7), st.integers(1, 2000), st.integers(1, 120))
def test_trueValueIsInsideItsBoundsAndNeighboursAreNot(start, length, digits):
    """chunkBounds holds the exact chunk value, and is tight enough to refuse the value of a neighbouring chunk."""
    stop = start + length
    value = leibnizChunk(start, stop, digits)
    lo, hi = chunkBounds(start, stop, digits)
    assert lo <= value <= hi
    wrong = leibnizChunk(start + 1, stop + 1, digits)
    if start > 0 and 10**digits // (start + 1) ** 2 > 4 * length:
        assert not lo <= wrong <= hi


def test_referencePiAndFormatting():
    """Machin's pi matches the known 60 decimals; format and parse (bc's -.5 included) are inverse."""
    assert formatScaled(referencePi(60), 60) == PI60
    assert parseScaled("-.5\n", 3) == -500 and formatScaled(-500, 3) == "-0.500"
    assert parseScaled(formatScaled(-123456789, 4), 4) == -123456789


def test_eulerCorrectionBuysDigits():
    """Each Euler term shrinks the error of a 100,000-term sum by orders of magnitude, down to the truncation floor."""
    n, digits = 100_000, 60
    s, pi = leibnizChunk(0, n, digits), referencePi(digits)
    errors = [abs(pi - (s + eulerCorrection(n, digits, k))) for k in range(5)]
    assert errors[0] > 10**54 and errors[1] < 10**45 and errors[2] < 10**35 and errors[3] < 10**26 and errors[4] < 10**16
    assert all(b < a for a, b in zip(errors, errors[1:]))
