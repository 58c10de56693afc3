"""
Logs that cannot fill a disk.

  - L{bounded} is a log observer factory for C{twistd --logger}: a log
    file that rotates at 10 MB and keeps 5 old files (C{twistd --logfile}
    rotates at 1 MB but keeps every old file, forever), at the C{info}
    level unless C{COURSENET_LOG_LEVEL} says otherwise.
  - L{LogBudget} lets a service log what a stranger can trigger
    (refusals, failed logins, connections turned away) at a bounded rate:
    past the budget, lines are counted, and the next one allowed says how
    many were left out.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

#: Where L{bounded} writes, and how much it keeps.
LOG_FILE_ENV = "COURSENET_LOG_FILE"
LOG_LEVEL_ENV = "COURSENET_LOG_LEVEL"
ROTATE_BYTES = 10_000_000
KEEP_FILES = 5


def bounded() -> ILogObserver:
    """
    The observer for C{twistd --logger coursenet.logs.bounded}: the file
    named by C{COURSENET_LOG_FILE} (default C{twistd.log}), rotated every
    L{ROTATE_BYTES} with L{KEEP_FILES} old files kept, so a log never takes
    more than 60 MB; events below C{COURSENET_LOG_LEVEL} (default C{info})
    are dropped.
    """
    path = os.environ.get(LOG_FILE_ENV, "twistd.log")
    level = LogLevel.levelWithName(os.environ.get(LOG_LEVEL_ENV, "info"))
    logFile = LogFile.fromFullPath(path, rotateLength=ROTATE_BYTES, maxRotatedFiles=KEEP_FILES)
    return FilteringLogObserver(
        textFileLogObserver(logFile), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )


def peerName(address, user: str | None = None) -> str:
    """
    How log lines name a client, as pyftpdlib does: C{127.0.0.1:56480},
    C{[::1]:56480}, with C{ [alice]} once it has logged in.
    """
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        name = str(address)
    elif ":" in host:
        name = f"[{host}]:{port}"
    else:
        name = f"{host}:{port}"
    return f"{name} [{user}]" if user else name


class LogBudget:
    """
    At most C{burst} lines, refilled at C{perMinute} a minute, for one kind
    of event; what is over the budget is counted and reported with the next
    line that is logged.
    """

    def __init__(self, log: Logger, clock: Any, perMinute: float = 60, burst: int = 20) -> None:
        self._log = log
        self._clock = clock
        self._rate = perMinute / 60.0
        self._burst = burst
        self._tokens = float(burst)
        self._stamp: float | None = None
        self.suppressed = 0

    def info(self, format: str, **kwargs: Any) -> None:
        """
        Log at C{info} if the budget allows, else count the line.
        """
        now = self._clock.seconds()
        if self._stamp is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            self.suppressed += 1
            return
        self._tokens -= 1
        if self.suppressed:
            format += " ({suppressed} similar lines left out)"
            kwargs["suppressed"], self.suppressed = self.suppressed, 0
        self._log.info(format, **kwargs)
