"""
The numerics of a job, pure: no reactor, no I/O.

A chunk C{[start, stop)} of the Gregory-Leibniz series at C{digits} is the
sum, for C{start <= i < stop}, of C{(-1)**i * floor(4 * 10**digits / (2i + 1))}:
exactly what C{bc}'s C{psum(start, stop)} computes at C{scale=digits}
(C{bc} truncates each quotient to C{scale} decimals and adds exactly), kept
here as an integer in units of C{10**-digits}.  Chunk sums add exactly, so
any split gives the same digits.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

#: The series a job may name.
SERIES = ("leibniz",)
#: Most digits a job may ask for (an AMP value holds 65535 bytes; Python
#: parses integers of up to 4300 digits).
MAX_DIGITS = 1000
#: The first Euler numbers E_0, E_2, E_4, ...: the asymptotic expansion of
#: the Leibniz series' remainder.
EULER = (1, -1, 5, -61, 1385, -50521, 2702765, -199360981, 19391512145, -2404879675441)


def leibnizChunk(start: int, stop: int, digits: int) -> int:
    """
    C{bc}'s C{psum(start, stop)} at C{scale=digits}, in units of
    C{10**-digits}.
    """
    if stop <= start:
        return 0
    k = 4 * 10**digits
    # Terms with an even index are added, odd ones subtracted; step 4 over
    # the odd denominators 2i+1 walks one parity.
    first = 2 * start + 1
    second = first + 2
    plus, minus = (first, second) if start % 2 == 0 else (second, first)
    end = 2 * stop
    return sum(k // d for d in range(plus, end, 4)) - sum(k // d for d in range(minus, end, 4))


CHUNK_FUNCTIONS: dict[str, Callable[[int, int, int], int]] = {"leibniz": leibnizChunk}


def computeChunk(series: str, start: int, stop: int, digits: int) -> int:
    """
    The chunk C{[start, stop)} of C{series} at C{digits}; what a worker runs
    (in another process, or on a Dask worker: module-level, picklable).
    """
    return CHUNK_FUNCTIONS[series](start, stop, digits)


def _tailBounds(n: int) -> tuple[Fraction, Fraction]:
    """
    Bounds of the Leibniz remainder C{R(n) = 4 * sum_{i>=n} (-1)**(i-n) / (2i+1)
    = 4 * integral_0^1 x**(2n) / (1 + x**2) dx}: since
    C{1/2 <= 1/(1+x**2) <= 1 - x**2/2} on [0, 1], C{R(n)} lies between
    C{2/(2n+1)} and C{4/(2n+1) - 2/(2n+3)}, an interval of width about
    C{1/n**2}.  C{R(0)} is pi itself, between 3.14159 and 3.14160.
    """
    if n == 0:
        return Fraction(314159, 100000), Fraction(314160, 100000)
    return Fraction(2, 2 * n + 1), Fraction(4, 2 * n + 1) - Fraction(2, 2 * n + 3)


def chunkBounds(start: int, stop: int, digits: int) -> tuple[int, int]:
    """
    The closed range that C{leibnizChunk(start, stop, digits)} must lie in,
    from the remainder bounds (rigorous, no trust in the worker): a result
    outside it is garbage.  The exact chunk is C{(-1)**start R(start) -
    (-1)**stop R(stop)}; truncating each of the C{stop - start} quotients
    moves it by less than one unit each.
    """
    if stop <= start:
        return 0, 0
    scale = 10**digits
    loA, hiA = _tailBounds(start)
    loB, hiB = _tailBounds(stop)
    if start % 2:
        loA, hiA = -hiA, -loA
    if stop % 2 == 0:
        loB, hiB = -hiB, -loB
    # exact = sA*R(start) + sB*R(stop), each term within its interval.
    lo = (loA + loB) * scale - (stop - start)
    hi = (hiA + hiB) * scale + (stop - start)
    return _floor(lo), -_floor(-hi)


def _floor(x: Fraction) -> int:
    return x.numerator // x.denominator


def eulerCorrection(terms: int, digits: int, order: int = len(EULER)) -> int:
    """
    What to add to the sum of the first C{terms} terms to approach pi, in
    units of C{10**-digits}: C{pi - S(N) ~ (-1)**N * 2 * sum_k E_2k / (2N)**(2k+1)}
    (the Euler numbers), to C{order} terms.  The first term is C{1/N}; each
    further one gains about C{2 log10(2N)} digits, until the expansion
    (asymptotic, not convergent) or the truncation of the terms stops it.
    """
    if terms <= 0 or order <= 0:
        return 0
    twoN = 2 * terms
    total = sum(Fraction(2 * EULER[k], twoN ** (2 * k + 1)) for k in range(min(order, len(EULER))))
    if terms % 2:
        total = -total
    return round(total * 10**digits)


def referencePi(digits: int) -> int:
    """
    pi in units of C{10**-digits}, correct to the last unit or one below, by
    Machin's formula C{pi = 16 atan(1/5) - 4 atan(1/239)} in integers.
    """
    guard = 10
    scale = 10 ** (digits + guard)

    def atanInverse(x: int) -> int:
        total = term = scale // x
        x2, n, sign = x * x, 1, 1
        while term:
            term //= x2
            n += 2
            sign = -sign
            total += sign * (term // n)
        return total

    return (16 * atanInverse(5) - 4 * atanInverse(239)) // 10**guard


def formatScaled(value: int, digits: int) -> str:
    """
    An integer in units of C{10**-digits} as a decimal string with
    C{digits} decimals (C{"3.1415..."}, C{"-0.32..."}).
    """
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**digits)
    if digits == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{digits}d}"


def parseScaled(text: str, digits: int) -> int:
    """
    The inverse of L{formatScaled}; also reads C{bc}'s output (C{-.32...},
    a trailing newline, backslash-newline line breaks).

    @raise ValueError: if C{text} is not a decimal with at most C{digits}
        decimals.
    """
    text = text.replace("\\\n", "").strip()
    sign = 1
    if text.startswith("-"):
        sign, text = -1, text[1:]
    whole, _, frac = text.partition(".")
    if not (whole or frac) or not (whole + frac).isdigit() or len(frac) > digits or not whole.isascii():
        raise ValueError(f"not a decimal with at most {digits} decimals: {text[:80]!r}")
    return sign * (int(whole or "0") * 10**digits + int(frac.ljust(digits, "0") or "0"))


def chunkRanges(terms: int, chunk: int) -> list[tuple[int, int]]:
    """
    The chunks C{[start, stop)} of a job of C{terms} terms, C{chunk} each
    (the last one shorter).
    """
    return [(start, min(start + chunk, terms)) for start in range(0, terms, chunk)]
