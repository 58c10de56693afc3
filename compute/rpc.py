"""
The XML-RPC front door (docs/compute.md, section 4): C{submit}, C{status},
C{result}, C{cancel}, and C{system.multicall} and the introspection
methods, for Python's C{xmlrpc.client} as it is.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from twisted.internet.defer import DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.web import server, xmlrpc

from compute.jobs import BAD_ARGUMENT, JobError

#: Largest request body read, in bytes.
MAX_REQUEST = 1 << 20
#: Longest wait() in seconds.
MAX_WAIT = 300
#: Calls one system.multicall may make.
MAX_MULTICALL = 1000


def _fault(failure) -> xmlrpc.Fault:
    if failure.check(JobError):
        return xmlrpc.Fault(failure.value.code, failure.value.message)
    if failure.check(xmlrpc.Fault):
        return failure.value
    Logger().failure("XML-RPC call failed", failure)
    return xmlrpc.Fault(xmlrpc.XMLRPC.FAILURE, "internal error: see the coordinator's log")


def _raiseFault(failure) -> None:
    raise _fault(failure)


def _takes(*names: str) -> Callable:
    """
    An XML-RPC method of exactly these arguments: a call with another
    number gets a fault that names them, not Python's TypeError.
    """

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def method(self, *args: Any):
            if len(args) != len(names):
                raise xmlrpc.Fault(BAD_ARGUMENT, f"{f.__name__[7:]}({', '.join(names)}) takes {len(names)}"
                                                 f" argument{'s' * (len(names) != 1)}, got {len(args)}")
            return maybeDeferred(f, self, *args).addErrback(_raiseFault)

        return method

    return decorate


class Introspection(xmlrpc.XMLRPCIntrospection):
    """
    C{system.listMethods}, C{methodHelp}, C{methodSignature} and
    C{system.multicall}.
    """

    def xmlrpc_multicall(self, calls: Any):
        """
        Run several calls in one request: a list of C{{methodName, params}}
        structs in, a list of C{[result]} or fault structs out, in order.
        """
        if not isinstance(calls, list) or len(calls) > MAX_MULTICALL:
            raise xmlrpc.Fault(BAD_ARGUMENT, f"multicall takes a list of at most {MAX_MULTICALL} calls")
        parent = self._xmlrpc_parent
        ds = []
        for call in calls:
            ds.append(maybeDeferred(self._one, parent, call).addCallbacks(
                lambda result: [result],
                lambda failure: (lambda f: {"faultCode": f.faultCode, "faultString": f.faultString})(_fault(failure)),
            ))
        return DeferredList(ds, consumeErrors=True).addCallback(lambda results: [r for _, r in results])

    xmlrpc_multicall.signature = [["array", "array"]]  # type: ignore[attr-defined]

    @staticmethod
    def _one(parent, call: Any):
        if not isinstance(call, dict) or not isinstance(call.get("methodName"), str) \
                or not isinstance(call.get("params", []), list):
            raise xmlrpc.Fault(BAD_ARGUMENT, "each call is a struct {methodName: string, params: array}")
        if call["methodName"] == "system.multicall":
            raise xmlrpc.Fault(BAD_ARGUMENT, "system.multicall may not call itself")
        return parent.lookupProcedure(call["methodName"])(*call.get("params", []))


class ComputeRPC(xmlrpc.XMLRPC):
    """
    The front door over an L{compute.interfaces.IScheduler}.
    """

    def __init__(self, scheduler, reactor=None) -> None:
        super().__init__(allowNone=False, useDateTime=False)
        self.scheduler = scheduler
        self._reactor = reactor
        self.putSubHandler("system", Introspection(self))

    def render_POST(self, request):
        request.content.seek(0, 2)
        size = request.content.tell()
        if size > MAX_REQUEST:
            request.setResponseCode(413)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"request body of {size} bytes; at most {MAX_REQUEST}\n".encode()
        return super().render_POST(request)

    @_takes("series", "terms", "chunk", "digits")
    def xmlrpc_submit(self, series, terms, chunk, digits):
        """
        Queue a job: the first C{terms} terms of C{series} ('leibniz'), in
        chunks of C{chunk} terms, each term to C{digits} decimals (bc's
        scale).  Returns the job id.
        """
        return self.scheduler.submit(series, terms, chunk, digits)

    xmlrpc_submit.signature = [["int", "string", "int", "int", "int"]]  # type: ignore[attr-defined]

    @_takes("job")
    def xmlrpc_status(self, job):
        """
        A job's state (queued, running, done, failed, cancelled),
        chunks_done, chunks_total, terms_done and its parameters.
        """
        return self.scheduler.status(job)

    xmlrpc_status.signature = [["struct", "int"]]  # type: ignore[attr-defined]

    @_takes("job")
    def xmlrpc_result(self, job):
        """
        A done job's sum as a decimal string with its digits; a fault
        (code 3) while it is not done.
        """
        return self.scheduler.result(job)

    xmlrpc_result.signature = [["string", "int"]]  # type: ignore[attr-defined]

    @_takes("job", "seconds")
    def xmlrpc_wait(self, job, seconds):
        """
        The job's status once it has finished, or after C{seconds} (at most
        MAX_WAIT) if it has not: a poll that costs one request.
        """
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= MAX_WAIT:
            raise JobError(BAD_ARGUMENT, f"seconds must be a number from 0 to {MAX_WAIT}")
        d = self.scheduler.whenFinished(job)
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        d.addTimeout(seconds, self._reactor, onTimeoutCancel=lambda result, timeout: None)
        return d.addCallback(lambda _: self.scheduler.status(job))

    xmlrpc_wait.signature = [["struct", "int", "int"], ["struct", "int", "double"]]  # type: ignore[attr-defined]

    @_takes("job")
    def xmlrpc_cancel(self, job):
        """
        Cancel a job; returns its state (cancelled, or done/failed if it
        had already finished).
        """
        return self.scheduler.cancel(job)

    xmlrpc_cancel.signature = [["string", "int"]]  # type: ignore[attr-defined]


def makeSite(scheduler, reactor=None) -> server.Site:
    """
    The HTTP site serving L{ComputeRPC} at C{/} (and C{/RPC2}).
    """
    rpc = ComputeRPC(scheduler, reactor)
    rpc.putChild(b"RPC2", rpc)
    return server.Site(rpc)
