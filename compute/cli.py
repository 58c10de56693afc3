"""
C{compute}: submit a job to a coordinator over XML-RPC, show a progress bar
over its chunks, print the digits and their error against pi.
"""

from __future__ import annotations

import argparse
import sys
import xmlrpc.client
from typing import Any

from compute.series import eulerCorrection, formatScaled, parseScaled, referencePi


def firstWrongDigit(value: int, pi: int, digits: int) -> int:
    """
    How many decimals of C{value} agree with C{pi} (both in units of
    C{10**-digits}).
    """
    a, b = formatScaled(value, digits), formatScaled(pi, digits)
    same = 0
    for x, y in zip(a, b):
        if x != y:
            break
        same += 1
    return max(0, same - 2)


def report(text: str, terms: int, digits: int, out=sys.stdout) -> None:
    """
    Print a Leibniz sum, its error against pi, and the sum with the Euler
    correction and that error.
    """
    value = parseScaled(text, digits)
    pi = referencePi(digits)
    corrected = value + eulerCorrection(terms, digits)
    print(f"sum       {text}", file=out)
    print(f"pi        {formatScaled(pi, digits)}", file=out)
    print(f"error     {formatScaled(pi - value, digits)}  ({firstWrongDigit(value, pi, digits)} decimals right)",
          file=out)
    print(f"corrected {formatScaled(corrected, digits)}", file=out)
    print(f"error     {formatScaled(pi - corrected, digits)}  ({firstWrongDigit(corrected, pi, digits)} decimals"
          " right, Euler correction)", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compute", description="Compute pi on a compute coordinator.")
    parser.add_argument("--server", default="http://127.0.0.1:8790/", help="the coordinator's XML-RPC URL")
    parser.add_argument("--series", default="leibniz")
    parser.add_argument("--terms", type=int, default=4_000_000)
    parser.add_argument("--chunk", type=int, default=500_000)
    parser.add_argument("--digits", type=int, default=60)
    parser.add_argument("--job", type=int, help="follow this job instead of submitting one")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    server: Any = xmlrpc.client.ServerProxy(args.server)
    try:
        job = args.job if args.job is not None else server.submit(args.series, args.terms, args.chunk, args.digits)
        status = server.status(job)
        from tqdm import tqdm

        with tqdm(total=status["chunks_total"], unit="chunk", desc=f"job {job}", disable=args.quiet,
                  file=sys.stderr) as bar:
            while True:
                # wait() answers as soon as the job finishes, else after 0.25 s.
                status = server.wait(job, 0.25)
                bar.update(status["chunks_done"] - bar.n)
                if status["state"] in ("done", "failed", "cancelled"):
                    break
        if status["state"] != "done":
            print(f"compute: job {job} {status['state']}: {status.get('error', '')}", file=sys.stderr)
            return 1
        text = server.result(job)
    except xmlrpc.client.Fault as e:
        print(f"compute: {e.faultString}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"compute: cannot reach {args.server}: {e}", file=sys.stderr)
        return 1
    print(f"job {job}: {status['terms']} terms of {status['series']} in {status['chunks_total']} chunks,"
          f" {status['digits']} digits")
    report(text, status["terms"], status["digits"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
