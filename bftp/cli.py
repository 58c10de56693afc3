"""
The C{bftp} command:

    bftp get  [-r] bftp://USER@HOST:PORT/REMOTE LOCAL
    bftp put  [-r] LOCAL bftp://USER@HOST:PORT/REMOTE
    bftp mv   URL NEWPATH
    bftp ls   URL          bftp stat URL       bftp rm URL
    bftp mkdir URL         bftp rmdir URL      bftp hash URL
    bftp shell URL
    bftp collect URL LOCALDIR   (a whole tree: an admin collecting hand-ins)

C{bftps://} uses TLS and verifies the server's certificate (C{--cafile} to
trust a certificate of your own).  The password comes from C{BFTP_PASSWORD}
or a prompt; a URL without a user logs in as C{anonymous}.
"""

from __future__ import annotations

import argparse
import getpass
import os
import posixpath
import shlex
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.task import react

from bftp.client import URL, BFTPError, connect
from bftp.fs import formatTime


class CLIError(Exception):
    """
    A one-line error for the user, and the exit status that goes with it
    (2: the command was wrong, as argparse exits; 1: it failed).
    """

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _progressBar(enabled: bool, label: str):
    """
    C{(onStart, progress, close)} callbacks that drive a tqdm bar on
    stderr (shown only when stderr is a terminal unless forced).
    """
    if not enabled:
        return None, None, lambda: None
    from tqdm import tqdm

    bar = []

    def onStart(size: int, offset: int) -> None:
        bar.append(
            tqdm(total=size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=label, disable=None, leave=True)
        )

    def progress(n: int) -> None:
        if bar:
            bar[0].update(n)

    def close() -> None:
        if bar:
            bar[0].close()

    return onStart, progress, close


def _password(url: URL) -> str:
    if url.user is None or url.user == "anonymous":
        return "anonymous@"
    password = os.environ.get("BFTP_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise CLIError("no password: set BFTP_PASSWORD")
        password = getpass.getpass(f"password for {url.user}@{url.host}: ")
    return password


async def _session(reactor, url: URL, cafile: str | None):
    try:
        client = await connect(reactor, url.host, url.port, tls=url.tls, cafile=cafile)
    except (ConnectError, OSError) as e:
        raise CLIError(f"cannot connect to {url.host}:{url.port}: {e}")
    await client.login(url.user or "anonymous", _password(url))
    return client


def _listing(entries) -> list[str]:
    return [f"{e.kind:5} {e.size:>12} {formatTime(e.mtime)} {e.name}" for e in entries]


async def remoteTree(client, remote: str) -> tuple[list[str], list[tuple[str, int]]]:
    """
    The folders and C{(file, size)} pairs below the remote directory
    C{remote}, as paths relative to it.

    Names the server lists that could lead out of a local folder (C{..},
    a slash) are refused: the server is not trusted with the client's
    file system.
    """
    folders: list[str] = []
    files: list[tuple[str, int]] = []

    async def walk(relative: str) -> None:
        for entry in await client.list(posixpath.join(remote, relative) if relative else remote):
            if entry.name in ("", ".", "..") or "/" in entry.name or "\0" in entry.name:
                raise CLIError(f"the server listed a name that is not a plain name: {entry.name!r}", 1)
            path = posixpath.join(relative, entry.name)
            if entry.kind == "dir":
                folders.append(path)
                await walk(path)
            elif entry.kind == "file":
                files.append((path, entry.size))

    await walk("")
    return folders, files


def localTree(local: str) -> tuple[list[str], list[tuple[str, int]]]:
    """
    The folders and C{(file, size)} pairs below the local directory
    C{local}, as relative paths with slashes; links are not followed.
    """
    folders: list[str] = []
    files: list[tuple[str, int]] = []
    for directory, dirnames, filenames in os.walk(local):
        relative = os.path.relpath(directory, local)
        relative = "" if relative == "." else relative.replace(os.sep, "/")
        dirnames.sort()
        for name in dirnames:
            folders.append(posixpath.join(relative, name))
        for name in sorted(filenames):
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                files.append((posixpath.join(relative, name), os.path.getsize(path)))
    return folders, files


async def collect(client, remote: str, local: str, out=None, progress=None, onStart=None) -> tuple[int, int]:
    """
    Download the tree below the remote directory C{remote} into C{local},
    each file verified as C{get} does (and resumed if cut before).

    @param progress: called with every number of bytes received.
    @param onStart: called once with the total size, before any file.
    @return: how many files and bytes were collected.
    """
    folders, files = await remoteTree(client, remote)
    if onStart is not None:
        onStart(sum(size for _, size in files), 0)
    os.makedirs(local, exist_ok=True)
    for folder in folders:
        os.makedirs(os.path.join(local, *folder.split("/")), exist_ok=True)
    total = 0
    for path, size in files:
        lpath = os.path.join(local, *path.split("/"))
        digest = await client.get(posixpath.join(remote, path), lpath, progress=progress)
        if out is not None:
            print(f"{lpath}: {client.digest} {digest}", file=out)
        total += size
    return len(files), total


async def upload(client, local: str, remote: str, out=None, progress=None, onStart=None) -> tuple[int, int]:
    """
    Upload the tree below the local directory C{local} as the remote
    directory C{remote} (made if missing), each file verified by its
    digest and resumed where an earlier upload was cut.

    @return: how many files and bytes were sent.
    """
    folders, files = localTree(local)
    if onStart is not None:
        onStart(sum(size for _, size in files), 0)
    for folder in [""] + folders:
        try:
            await client.mkdir(posixpath.join(remote, folder) if folder else remote)
        except BFTPError as e:
            if e.code != 551:  # already there
                raise
    total = 0
    for path, size in files:
        rpath = posixpath.join(remote, path)
        digest = await client.put(os.path.join(local, *path.split("/")), rpath, resume=True, progress=progress)
        if out is not None:
            print(f"{rpath}: stored, {client.digest} {digest}", file=out)
        total += size
    return len(files), total


def describeStat(st) -> str:
    """
    One line for a STAT result.
    """
    unfinished = f" (unfinished upload: {st.partial} bytes)" if st.partial else ""
    if not st.exists:
        return f"{st.path}: does not exist{unfinished}"
    size = f", {st.size} bytes" if st.kind == "file" else ""
    return f"{st.path}: {st.kind}{size}, modified {formatTime(st.mtime)}{unfinished}"


async def _run(reactor, args) -> None:
    out = args.stdout
    if args.command == "put":
        url = URL.parse(args.url)
        remote = url.path
        local = args.local.rstrip(os.sep) or args.local
        if not os.path.exists(local):
            raise CLIError(f"{local}: no such file or directory")
        if os.path.isdir(local) and not args.recursive:
            raise CLIError(f"{local} is a directory; use put -r to upload it with everything in it")
        if not os.path.isdir(local) and not os.path.isfile(local):
            raise CLIError(f"{local}: not a regular file")
        if remote.endswith("/"):
            remote += os.path.basename(local)
        client = await _session(reactor, url, args.cafile)
        onStart, progress, close = _progressBar(args.progress, os.path.basename(local))
        try:
            if args.recursive and os.path.isdir(local):
                files, size = await upload(client, local, remote, out, progress, onStart)
                print(f"sent {files} files, {size} bytes, from {local} into {remote}", file=out)
            else:
                digest = await client.put(local, remote, resume=not args.restart, progress=progress, onStart=onStart)
                print(f"{remote}: stored, {client.digest} {digest}", file=out)
        finally:
            close()
        await client.quit()
        return
    url = URL.parse(args.url)
    client = await _session(reactor, url, args.cafile)
    if args.command == "get" and args.recursive:
        local = args.local or posixpath.basename(url.path.rstrip("/")) or "download"
        onStart, progress, close = _progressBar(args.progress, posixpath.basename(url.path.rstrip("/")) or "/")
        try:
            files, size = await collect(client, url.path, local, out, progress, onStart)
        finally:
            close()
        print(f"received {files} files, {size} bytes, from {url.path} into {local}", file=out)
    elif args.command == "get":
        local = args.local or posixpath.basename(url.path) or "download"
        if os.path.isdir(local):
            local = os.path.join(local, posixpath.basename(url.path))
        onStart, progress, close = _progressBar(args.progress, posixpath.basename(url.path))
        try:
            digest = await client.get(url.path, local, resume=not args.no_resume, progress=progress, onStart=onStart)
        finally:
            close()
        print(f"{local}: {client.digest} {digest}", file=out)
    elif args.command == "ls":
        for line in _listing(await client.list(url.path)):
            print(line, file=out)
    elif args.command == "stat":
        st = await client.stat(url.path)
        if not st.exists:
            await client.quit()
            raise CLIError(describeStat(st), 1)
        print(describeStat(st), file=out)
    elif args.command == "mv":
        await client.rename(url.path, args.target)
        print(f"{url.path} -> {args.target}", file=out)
    elif args.command == "rm":
        await client.delete(url.path)
    elif args.command == "mkdir":
        await client.mkdir(url.path)
    elif args.command == "rmdir":
        await client.rmdir(url.path)
    elif args.command == "hash":
        print(f"{await client.hash(url.path)}  {url.path}", file=out)
    elif args.command == "collect":
        files, size = await collect(client, url.path, args.local, out)
        print(f"collected {files} files, {size} bytes, from {url.path} into {args.local}", file=out)
    elif args.command == "shell":
        if url.path != "/":
            await client.cd(url.path)
        await Shell(client, args).run()
    await client.quit()


class Shell:
    """
    An interactive session: one command a line, like a small FTP client.
    """

    COMMANDS = "ls [path] | cd path | pwd | get remote [local] | put local [remote] | stat path | hash path | rm path | mkdir path | rmdir path | mv from to | help | quit"

    VERBS = ["ls", "cd", "pwd", "get", "put", "stat", "hash", "rm", "mkdir", "rmdir", "mv", "help", "quit"]
    #: Which arguments of a verb are local paths; the others are remote.
    LOCAL_ARGS = {"put": {0}, "get": {1}}
    HISTORY = os.path.expanduser("~/.bftp_history")

    def __init__(self, client, args) -> None:
        self.client = client
        self.args = args
        self._listings: dict[str, list[str]] = {}

    def completions(self, line: str, begidx: int, text: str, remote, local) -> list[str]:
        """
        What the word C{text}, starting at C{begidx} of C{line}, may become:
        a verb first, then remote or local paths as the verb takes them.

        @param remote: C{directory -> [names, folders ending in /]} on the
            server.
        @param local: the same on this machine.
        """
        before = line[:begidx].split()
        if not before:
            return [v + " " for v in self.VERBS if v.startswith(text)]
        index = len(before) - 1
        lister = local if index in self.LOCAL_ARGS.get(before[0], ()) else remote
        directory, _, stem = text.rpartition("/")
        prefix = directory + "/" if directory or text.startswith("/") else ""
        try:
            names = lister(directory or ("/" if text.startswith("/") else "."))
        except Exception:
            return []
        return [prefix + n for n in names if n.startswith(stem)]

    def _remoteNames(self, directory: str) -> list[str]:
        from twisted.internet import reactor, threads

        if directory not in self._listings:
            fromThreads: Any = reactor
            entries = threads.blockingCallFromThread(fromThreads, self.client.list, directory)
            self._listings[directory] = [e.name + ("/" if e.kind == "dir" else "") for e in entries]
        return self._listings[directory]

    @staticmethod
    def _localNames(directory: str) -> list[str]:
        return sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(directory))

    def _setUpReadline(self) -> None:
        """
        Line editing, history (~/.bftp_history) and Tab completion of
        verbs and paths, when a person types at a terminal.
        """
        if not sys.stdin.isatty():
            return
        try:
            import readline
        except ImportError:
            return
        try:
            readline.read_history_file(self.HISTORY)
        except OSError:
            pass
        readline.set_history_length(1000)
        readline.set_completer_delims(" \t\n")

        def complete(text: str, state: int) -> str | None:
            found = self.completions(
                readline.get_line_buffer(), readline.get_begidx(), text, self._remoteNames, self._localNames
            )
            return found[state] if state < len(found) else None

        readline.set_completer(complete)
        readline.parse_and_bind("tab: complete")

    def _saveHistory(self) -> None:
        if sys.stdin.isatty():
            try:
                import readline

                readline.write_history_file(self.HISTORY)
            except (ImportError, OSError):
                pass

    async def run(self) -> None:
        self._setUpReadline()
        try:
            await self._loop()
        finally:
            self._saveHistory()

    async def _loop(self) -> None:
        from twisted.internet import threads

        print(f"connected: {self.client.serverInfo}. Type help; Tab completes commands and paths.", file=self.args.stdout)
        while True:
            self._listings.clear()  # what the last command changed is seen
            try:
                line = await threads.deferToThread(input, "bftp> ")
            except EOFError:
                return
            try:
                words = shlex.split(line)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                continue
            if not words:
                continue
            if words[0] in ("quit", "exit", "bye"):
                return
            try:
                await self.do(words[0], words[1:])
            except BFTPError as e:
                print(f"error: {e}", file=sys.stderr)
            except (TypeError, ValueError, OSError) as e:
                print(f"error: {e}", file=sys.stderr)

    async def do(self, verb: str, a: list[str]) -> None:
        c, out = self.client, self.args.stdout
        if verb == "help":
            print(self.COMMANDS, file=out)
        elif verb == "ls":
            for line in _listing(await c.list(*a[:1])):
                print(line, file=out)
        elif verb == "cd":
            print(await c.cd(a[0]), file=out)
        elif verb == "pwd":
            print(await c.pwd(), file=out)
        elif verb in ("get", "put"):
            src = a[0]
            dst = a[1] if len(a) > 1 else posixpath.basename(src)
            onStart, progress, close = _progressBar(self.args.progress, posixpath.basename(src))
            try:
                method = c.get if verb == "get" else c.put
                digest = await method(src, dst, progress=progress, onStart=onStart)
            finally:
                close()
            print(f"{dst}: {c.digest} {digest}", file=out)
        elif verb == "stat":
            print(describeStat(await c.stat(a[0])), file=out)
        elif verb == "hash":
            print(await c.hash(a[0]), file=out)
        elif verb == "rm":
            await c.delete(a[0])
        elif verb == "mkdir":
            await c.mkdir(a[0])
        elif verb == "rmdir":
            await c.rmdir(a[0])
        elif verb == "mv":
            await c.rename(a[0], a[1])
        else:
            print(f"unknown command {verb}; type help", file=sys.stderr)


def _common(defaults: bool) -> argparse.ArgumentParser:
    """
    The options every subcommand takes, before or after its name.  After
    it, they have no defaults of their own, so they do not undo one given
    before it.
    """
    p = argparse.ArgumentParser(add_help=False)
    unset: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    p.add_argument("--cafile", help="trust the certificates in this PEM file for bftps:// (default: the system's)", **unset)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar", **unset)
    return p


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bftp", description="BFTP client: move files to and from a BFTP server.", parents=[_common(True)]
    )
    common = [_common(False)]
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    g = sub.add_parser("get", help="download a file", parents=common)
    g.add_argument("url")
    g.add_argument("local", nargs="?")
    g.add_argument("--no-resume", action="store_true", help="start over instead of continuing LOCAL.bftp-part")
    g.add_argument("-r", "--recursive", action="store_true", help="download a directory and everything in it")
    u = sub.add_parser("put", help="upload a file (continuing one that was cut)", parents=common)
    u.add_argument("local")
    u.add_argument("url")
    u.add_argument("-r", "--recursive", action="store_true", help="upload a directory and everything in it")
    u.add_argument("--restart", action="store_true", help="send the whole file even if the server kept part of it")
    u.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts
    m = sub.add_parser("mv", help="rename a remote file or directory", parents=common)
    m.add_argument("url")
    m.add_argument("target", help="the new path (on the same server)")
    c = sub.add_parser("collect", help="download a whole directory tree (e.g. every hand-in)", parents=common)
    c.add_argument("url")
    c.add_argument("local")
    for name, text in [("ls", "list a directory"), ("stat", "does a path exist, its size"),
                       ("rm", "delete a file"), ("mkdir", "make a directory"),
                       ("rmdir", "remove an empty directory"), ("hash", "SHA-256 of a remote file"),
                       ("shell", "interactive session")]:
        sub.add_parser(name, help=text, parents=common).add_argument("url")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.stdout = sys.stdout
    status = []

    async def run(reactor):
        try:
            await _run(reactor, args)
        except CLIError as e:
            print(f"bftp: {e}", file=sys.stderr)
            status.append(e.status)
        except BFTPError as e:
            print(f"bftp: {e}", file=sys.stderr)
            status.append(1)
        except ValueError as e:
            print(f"bftp: {e}", file=sys.stderr)
            status.append(2)
        except (ConnectionError, ConnectionLost, ConnectError, OSError) as e:
            print(f"bftp: {e}", file=sys.stderr)
            status.append(1)
        except Exception as e:  # a TLS verification failure, say
            print(f"bftp: {type(e).__name__}: {e}", file=sys.stderr)
            status.append(1)

        if status:
            raise SystemExit(status[0])

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))  # exits with the status


if __name__ == "__main__":
    main()
