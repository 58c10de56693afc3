"""
L{BlockingReactor}: what the protocols ask of a reactor, for code that runs
in many threads (or forked processes), each owning one connection.

Its "thread pool" runs work at once in the calling thread, C{callFromThread}
runs at once, and C{callLater} timers belong to the connection whose code
set them and run in that connection's thread (L{coursenet.blocking.transport}).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()


class _InlinePool:
    """
    A "thread pool" that runs work in the calling thread, with the reactor
    lock released meanwhile: the thread blocks, other connections go on.
    """

    def __init__(self, reactor: "BlockingReactor") -> None:
        self._reactor = reactor

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs) -> None:
        try:
            result = self._reactor.outside(f, *args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)

    def callInThread(self, f, *args, **kwargs) -> None:
        self.callInThreadWithCallback(lambda ok, result: None, f, *args, **kwargs)


class BlockingReactor:
    """
    What the protocols ask of a reactor, for code that runs in many
    threads (or forked processes), each owning one connection.

    @ivar lock: held by whichever thread runs protocol code.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._local = threading.local()
        self._pool = _InlinePool(self)

    # -- the lock -------------------------------------------------------------

    def holding(self) -> bool:
        """
        Whether the calling thread holds L{lock}.
        """
        return getattr(self._local, "held", False)

    def acquire(self) -> None:
        self.lock.acquire()
        self._local.held = True

    def release(self) -> None:
        self._local.held = False
        self.lock.release()

    def outside(self, f: Callable, *args, **kwargs):
        """
        Call C{f}, a blocking call, without the lock if the caller holds it.
        """
        if not self.holding():
            return f(*args, **kwargs)
        self.release()
        try:
            return f(*args, **kwargs)
        finally:
            self.acquire()

    def inside(self, f: Callable, *args, **kwargs):
        """
        Call C{f}, protocol code, with the lock.
        """
        if self.holding():
            return f(*args, **kwargs)
        self.acquire()
        try:
            return f(*args, **kwargs)
        finally:
            self.release()

    def wait(self, d: Deferred, timeout: float | None = None):
        """
        Block the calling thread until C{d} fires (the lock released
        meanwhile); return its result or raise its failure.
        """
        done = threading.Event()
        box: list = []

        def fired(result):
            box.append(result)
            done.set()

        d.addBoth(fired)
        if not box:
            if not self.outside(done.wait, timeout):
                raise TimeoutError("gave up waiting")
        if isinstance(box[0], Failure):
            box[0].raiseException()
        return box[0]

    def afterFork(self) -> None:
        """
        In a forked child: a fresh lock, whatever other threads of the
        parent held when it forked.
        """
        self.lock = threading.Lock()
        self._local = threading.local()

    # -- the connection the calling thread serves ---------------------------------

    def serving(self, connection) -> None:
        """
        The calling thread now runs C{connection}'s loop (L{None}: no more);
        timers its code sets belong to that connection.
        """
        self._local.connection = connection

    # -- IReactorTime, IReactorThreads ------------------------------------------

    def seconds(self) -> float:
        return time.time()

    def callLater(self, delay: float, f: Callable, *args, **kwargs) -> DelayedCall:
        """
        Call C{f} in C{delay} seconds, in the thread of the connection whose
        code asks (or in a thread of its own if no connection's does).
        """
        owner = getattr(self._local, "connection", None)
        if owner is None:
            return self._orphanCall(delay, f, args, kwargs)
        return owner.callLater(delay, f, args, kwargs)

    def _orphanCall(self, delay, f, args, kwargs) -> DelayedCall:
        # adopt() sets the canceller and the resetter.
        call = DelayedCall(self.seconds() + delay, f, args, kwargs, _unset, _unset, self.seconds)
        self.adopt(call)
        return call

    def adopt(self, call: DelayedCall) -> None:
        """
        Run C{call} when it is due in a thread of its own (a timer whose
        connection is gone, or that no connection set).
        """
        wake = threading.Event()
        call.canceller = lambda c: wake.set()
        call.resetter = lambda c: wake.set()

        def run():
            while call.active():
                left = call.getTime() - self.seconds()
                if left > 0:
                    wake.wait(left)
                    wake.clear()
                    continue
                self.inside(runCall, call)

        threading.Thread(target=run, daemon=True).start()

    def callFromThread(self, f: Callable, *args, **kwargs) -> None:
        """
        Run C{f} now, in the calling thread, with the lock.
        """
        self.inside(f, *args, **kwargs)

    def getThreadPool(self) -> _InlinePool:
        return self._pool

    def callInThread(self, f: Callable, *args, **kwargs) -> None:
        self._pool.callInThread(f, *args, **kwargs)

    def callWhenRunning(self, f: Callable, *args, **kwargs) -> None:
        f(*args, **kwargs)

    def addSystemEventTrigger(self, phase, event, f, *args, **kwargs):
        return None

    def removeSystemEventTrigger(self, triggerID) -> None:
        pass


def _unset(call: DelayedCall) -> None:
    pass


def runCall(call: DelayedCall) -> None:
    """
    Run a due timer, unless it was cancelled meanwhile; call with the lock.
    """
    if not call.active():
        return
    call.called = 1
    try:
        call.func(*call.args, **call.kw)
    except Exception:
        _log.failure("timed call {f} failed", f=call.func)
