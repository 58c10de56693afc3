"""
The pluggable pieces of the tether.
"""

from zope.interface import Interface


class ICommandRunner(Interface):
    """
    Runs the system commands (C{ip}, C{nft}, C{sysctl}) that configure
    interfaces, routes and NAT, so that tests can watch them instead.
    """

    def run(argv):
        """
        Run C{argv}, a list of strings, without a shell.

        @return: a L{Deferred} firing with its standard output (C{str}), or
            failing with L{tether.netconf.CommandFailed} on a non-zero exit.
        """
