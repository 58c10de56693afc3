"""
C{grades HOST:PORT COMMAND ...}: query or change the grades database from
a shell (docs/grades.md)::

    grades 127.0.0.1:7070 name 051883261            # DAN HACKER
    grades 127.0.0.1:7070 name 051883261 MATH       # DAN HACKER, then 87
    grades 127.0.0.1:7070 --user demo import marks.csv

The password comes from C{--password-env VAR}, else C{GRADES_PASSWORD}
if set, else a prompt; never from the command line.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectError
from twisted.internet.task import react

from coursenet.blocking import parseListen
from grades.client import connect
from grades.wire import GradesError

COMMANDS = ("name", "grades", "courses", "avg", "rank", "stats", "set", "import", "export", "whoami")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grades", description="Query or change a grades server.")
    p.add_argument("server", help="HOST:PORT")
    p.add_argument("command", type=str.lower, choices=COMMANDS, metavar="COMMAND",
                   help="name ID [COURSE...] | grades ID | courses [ID] | avg COURSE | rank ID COURSE |"
                        " stats COURSE | set ID COURSE GRADE | import FILE.csv | export [COURSE...] | whoami")
    p.add_argument("args", nargs="*")
    p.add_argument("--user", help="log in as this account")
    p.add_argument("--password-env", metavar="VAR",
                   help="read the password from this environment variable (default: GRADES_PASSWORD, if set)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (the server's TLS port)")
    p.add_argument("--starttls", action="store_true", help="switch to TLS with STARTTLS before logging in")
    p.add_argument("--cafile", help="PEM certificates to trust for TLS (e.g. var/tls/cert.pem)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for import")
    return p


def _need(args: list[str], least: int, most: int, usage: str) -> list[str]:
    if not least <= len(args) <= most:
        raise SystemExit(f"grades: usage: {usage}")
    return args


async def run(reactor, options: argparse.Namespace, out=sys.stdout) -> int:
    host, port = parseListen(options.server)
    password = None
    if options.user:
        if not options.password_env and os.environ.get("GRADES_PASSWORD") is not None:
            password = os.environ["GRADES_PASSWORD"]
        elif options.password_env:
            password = os.environ.get(options.password_env)
            if password is None:
                raise SystemExit(f"grades: environment variable {options.password_env} is not set")
        else:
            password = getpass.getpass(f"password for {options.user}: ")
    client = await connect(
        reactor, host, port, tls=options.tls, starttls=options.starttls, cafile=options.cafile,
        user=options.user, password=password,
    )
    args, command = options.args, options.command
    lines: list[str] = []
    if command == "name":
        _need(args, 1, 64, "name ID [COURSE...]")
        # Pipelined: every command is sent before the first answer comes.
        answers = [client.name(args[0])] + [client.grade(c) for c in args[1:]]
        failed = False
        for ok, result in await DeferredList(answers, consumeErrors=True):
            if ok:
                print(result, file=out)
            else:
                print(f"grades: {result.value}", file=sys.stderr)
                failed = True
        await client.end()
        return 1 if failed else 0
    elif command in ("grades", "courses"):
        _need(args, 1 if command == "grades" else 0, 1, f"{command} ID")
        if args:
            await client.name(args[0])
        if command == "grades":
            lines = [f"{c} {g}" for c, g in (await client.grades()).items()]
        else:
            lines = await client.courses()
    elif command == "avg":
        (course,) = _need(args, 1, 1, "avg COURSE")
        lines = [f"{await client.average(course):.2f}"]
    elif command == "rank":
        sid, course = _need(args, 2, 2, "rank ID COURSE")
        await client.name(sid)
        rank, of = await client.rank(course)
        lines = [f"{rank} of {of}"]
    elif command == "stats":
        (course,) = _need(args, 1, 1, "stats COURSE")
        lines = await client.stats(course)
    elif command == "set":
        sid, course, grade = _need(args, 3, 3, "set ID COURSE GRADE")
        lines = [await client.set(sid, course, grade)]
    elif command == "import":
        (path,) = _need(args, 1, 1, "import FILE.csv")
        with open(path, "rb") as f:
            data = f.read()
        lines = [await _import(client, data, options.no_progress)]
    elif command == "export":
        out.write(await client.export(*args))
    elif command == "whoami":
        lines = [await client.whoami()]
    for line in lines:
        print(line, file=out)
    await client.end()
    return 0


async def _import(client, data: bytes, quiet: bool) -> str:
    from tqdm import tqdm

    with tqdm(total=len(data), unit="B", unit_scale=True, desc="import", disable=quiet or None) as bar:
        return await client.importCSV(data, bar.update)


def main(argv: list[str] | None = None) -> int:
    args = parser()
    options = args.parse_args(argv)
    try:
        if parseListen(options.server, "the server")[1] == 0:
            raise ValueError(f"the server takes HOST:PORT, not port 0: {options.server!r}")
    except ValueError as e:
        args.error(str(e))
    if options.cafile and not os.path.isfile(options.cafile):
        args.error(f"--cafile {options.cafile}: no such file")

    async def go(reactor) -> None:
        try:
            status = await run(reactor, options)
        except GradesError as e:
            print(f"grades: {e}", file=sys.stderr)
            status = 1
        except (ConnectError, ConnectionError, OSError) as e:
            print(f"grades: {options.server}: {e}", file=sys.stderr)
            status = 1
        if status:
            raise SystemExit(status)

    def start(reactor) -> Deferred:
        return Deferred.fromCoroutine(go(reactor))

    try:
        react(start)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
