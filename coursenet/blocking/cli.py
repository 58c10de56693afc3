"""
The twins' command line: a service's twistd options with C{--listen
HOST:PORT} and C{--forking} (L{TwinOptionsMixin}), and L{twinMain} to run
the server they describe until SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import socketserver
import sys

from twisted.logger import Logger

from coursenet.blocking.reactor import BlockingReactor
from coursenet.options import OptionsMixinBase

_log = Logger()


def parseListen(text: str, what: str = "--listen") -> tuple[str, int]:
    """
    C{HOST:PORT} as C{(host, port)}.

    @param what: the option or argument it came from, for the error.
    @raise ValueError: if it is not one.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{what} takes HOST:PORT (a port up to 65535), not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def raiseFileLimit() -> None:
    """
    Allow as many descriptors as the hard limit does: a connection per
    client, and a wake-up descriptor per threaded connection.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def runServer(server: socketserver.TCPServer, name: str) -> None:
    """
    Serve until SIGTERM or SIGINT, logging to stderr.
    """
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.info)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    _log.info("{name} listening on {host}:{port}", name=name, host=host, port=port)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class TwinOptionsMixin(OptionsMixinBase):
    """
    Mixed into a service's twistd C{Options} (before it) for its twins:
    C{--listen HOST:PORT} instead of endpoint strings, C{--forking}, and
    no TLS.  The data options stay the service's own.
    """

    defaultListen = "127.0.0.1:0"
    optFlags = [["forking", None, "one process per connection (default: one thread)"]]

    def opt_listen(self, description: str) -> None:
        """
        Listen on HOST:PORT (default 127.0.0.1 and the service's port)
        """
        from twisted.python import usage

        try:
            self.setdefault("address", parseListen(description))
        except ValueError as e:
            raise usage.UsageError(str(e))
        else:
            self["listen"].append(description)

    def listenEndpoints(self) -> list[tuple[str, str]]:
        # HOST:PORT, already checked by opt_listen.
        return []

    def postOptions(self) -> None:
        from twisted.python import usage

        if self.get("tls-cert"):
            raise usage.UsageError("the threaded and forking twins serve plain TCP only; no --tls-cert")
        if len(self["listen"]) > 1:
            raise usage.UsageError("the twins listen on one HOST:PORT")
        if not self["listen"]:
            self.opt_listen(self.defaultListen)
        super().postOptions()


def twinMain(options, argv: list[str] | None, makeServer, name: str) -> int:
    """
    Run a service's twin from the command line.

    @param options: the service's L{TwinOptionsMixin} options, unparsed.
    @param makeServer: C{(options, reactor) -> socketserver server}, built
        around the service's own factory.
    """
    from twisted.python import usage

    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"{name}: {e}\n{options}", file=sys.stderr)
        return 2
    raiseFileLimit()
    server = makeServer(options, BlockingReactor())
    runServer(server, f"{name} ({'forking' if options['forking'] else 'threaded'})")
    return 0
