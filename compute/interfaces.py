"""
The pluggable pieces of the compute service.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IJobStore(Interface):
    """
    Where jobs and finished chunks live, so that a restarted coordinator
    resumes them.  Every method but C{load} returns a L{Deferred} and does
    its I/O off the reactor thread, in the order called.
    """

    def load():
        """
        Every job and its finished chunks, read at start (before serving).

        @return: a list of L{compute.store.StoredJob}.
        """

    def addJob(series, terms, chunk, digits, created):
        """
        Record a new job; fire with its id.
        """

    def addChunk(job, index, value, worker):
        """
        Record a finished chunk (its value, an integer in units of
        C{10**-digits}); a second one of the same chunk is ignored.
        """

    def setState(job, state, result, error, finished):
        """
        Record that a job is done (with its result, a decimal string),
        failed (with an error) or cancelled; a finished job's chunks may be
        dropped.
        """

    def close():
        """
        Finish the writes under way and close; fire when closed.
        """


class IScheduler(Interface):
    """
    The coordinator's jobs and leases, which the XML-RPC front door, the
    AMP worker door and the Dask engine all go through.
    """

    leaseTimeout = Attribute("Seconds a lease lives without progress before its chunk is issued again.")

    def submit(series, terms, chunk, digits):
        """
        Queue a job; fire with its id.

        @raise compute.jobs.JobError: if an argument is out of range.
        """

    def status(job):
        """
        A dict: C{job}, C{state}, C{chunks_done}, C{chunks_total}, ...

        @raise compute.jobs.JobError: for an unknown job.
        """

    def result(job):
        """
        The decimal string of a done job.

        @raise compute.jobs.JobError: unless the job is done.
        """

    def whenFinished(job):
        """
        A L{Deferred} firing when the job is done, failed or cancelled.
        """

    def cancel(job):
        """
        Cancel a job; its chunks are no longer issued and results for them
        are dropped.  Fire with its state.
        """

    def lease(holder):
        """
        A L{Deferred} firing with the next chunk's L{compute.jobs.Lease},
        when there is one (cancel it to stop waiting).
        """

    def progress(lease, done):
        """
        The holder of a lease has done C{done} terms of it: the lease is
        extended.  Return whether its chunk is still wanted.
        """

    def complete(lease, job, index, value, holder):
        """
        A result for chunk C{index} of C{job}: checked, kept, the job
        finished when it was the last.  Fire with C{(accepted, reason)}.

        @raise compute.jobs.BadResult: if the value is out of range.
        """

    def abandon(lease):
        """
        The holder gives a lease up (its computation failed): the chunk is
        issued again.
        """

    def release(holder):
        """
        Everything C{holder} leased goes back to the queue (its connection
        was lost).
        """


class IEngine(Interface):
    """
    Runs leased chunks somewhere other than the AMP workers (Dask).
    """

    def start():
        """
        Connect and begin taking leases.
        """

    def stop():
        """
        Stop taking leases; fire when stopped.
        """
