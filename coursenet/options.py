"""
Command-line pieces every service's twistd C{Options} shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.python import usage

from coursenet.accounts import parseUserSpec

if TYPE_CHECKING:
    # The mixins come before usage.Options in their users' bases, so the
    # type checker is told they are one (the option values, super's
    # postOptions); at run time they stay plain classes and leave Options'
    # own methods where the MRO puts them.
    OptionsMixinBase = usage.Options
else:
    OptionsMixinBase = object


class AccountOptionsMixin(OptionsMixinBase):
    """
    C{--user NAME:PASSWORD} (repeatable, collected in C{self["users"]}) and
    the check that C{--tls-cert} and C{--tls-key} come together.  Mix into
    a L{usage.Options} subclass before it.
    """

    def opt_user(self, spec: str) -> None:
        """
        Add an account NAME:PASSWORD (repeatable; for quick starts)
        """
        try:
            self.setdefault("users", []).append(parseUserSpec(spec))
        except ValueError as e:
            raise usage.UsageError(str(e))

    def checkTLSPair(self) -> None:
        """
        @raise usage.UsageError: if only one of --tls-cert, --tls-key is set.
        """
        if bool(self.get("tls-cert")) != bool(self.get("tls-key")):
            raise usage.UsageError("--tls-cert and --tls-key go together")


class AdmissionOptionsMixin(OptionsMixinBase):
    """
    C{--max-connections} and C{--max-per-address}, the caps of
    L{coursenet.admission.Admission} (L{None}: its defaults, under the
    process's descriptor limit).  Mix into a L{usage.Options} subclass
    before it; usage.Options gathers these with the subclass's own.
    """

    optParameters: list[Any] = [
        ["max-connections", None, None,
         "connections allowed in all, on every listener together"
         " (default: as many as the descriptor limit allows)", int],
        ["max-per-address", None, None, "connections allowed from one address (default: 256)", int],
    ]
