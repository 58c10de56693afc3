"""
The password-guess throttle on a L{Clock}: the rule's arithmetic, slots
that parallel attempts queue for, what one address's failures do to other
addresses and accounts, expiry, the SQLite store shared by two stores as by
two processes, and the checker and portal that carry the client's address.
No socket and no global reactor.
"""

from __future__ import annotations

import os
import sqlite3

import pytest
from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.credentials import Anonymous, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.python import usage
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from coursenet.accounts import IClientAddress, PasswordChecker, PasswordFrom, PeerPortal
from coursenet.throttle import (
    GuessOptionsMixin,
    GuessRule,
    IGuessStore,
    MemoryGuessStore,
    SQLiteGuessStore,
    Throttle,
    addressKey,
)
from tests.bftp_support import FakeReactor

ALICE = "alice"
HOME, AWAY = "10.0.0.1", "10.0.0.2"


def attempt(throttle, clock, checked, account=ALICE, address=HOME, ok=False, takes=0.0):
    """
    One guarded check that succeeds if C{ok}, answered C{takes} seconds
    after it starts; its start time goes in C{checked}.
    """

    def check():
        checked.append(clock.seconds())
        if takes:
            return deferLater(clock, takes, lambda: account if ok else fail(UnauthorizedLogin()))
        return succeed(account) if ok else fail(UnauthorizedLogin())

    d = throttle.guard(account, address, check)
    d.addErrback(lambda f: f.trap(UnauthorizedLogin) and None)
    return d


def fresh(rule: GuessRule = GuessRule()):
    """
    A throttle in memory on a new clock, and a list for its checks' times.
    """
    clock = Clock()
    return clock, Throttle(MemoryGuessStore(rule), clock), []


def untilFired(clock, d) -> float:
    """
    Advance C{clock} call by call until C{d} has fired; return the time.
    """
    while not d.called:
        clock.advance(min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds())
    return clock.seconds()


def attackers(throttle, clock, count, until, checked, **kw) -> None:
    """
    C{count} clients, each trying again the moment it is answered, until
    C{until} seconds have passed.
    """

    def again(_=None):
        if clock.seconds() < until:
            attempt(throttle, clock, checked, **kw).addBoth(again)

    for _ in range(count):
        again()
    while clock.seconds() < until:
        clock.advance(0.25)


def perMinute(times, minutes):
    return [sum(1 for t in times if 60 * m <= t < 60 * (m + 1)) for m in range(minutes)]


def test_ruleDoublesAfterTheFreeFailuresUpToTheCap():
    """A pair's first three failures are free; then 1, 2, 4 ... seconds, capped at 60."""
    rule = GuessRule()
    assert [rule.interval(n, 0) for n in range(1, 12)] == [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_ruleWithTheAccountBudgetSpentHasNoFreeFailures():
    """Once the account has had its budget of failures, a pair waits after its very first."""
    rule = GuessRule()
    assert [rule.interval(n, 10) for n in range(1, 5)] == [1, 2, 4, 8]
    assert rule.interval(1, 9) == 0


def test_ruleRefusesNegativeSettings():
    """A negative setting is an error, not a throttle that never waits."""
    with pytest.raises(ValueError):
        GuessRule(delay=-1)


def test_oneGuesserGetsNineChecksInTheFirstMinuteThenOneAMinute():
    """A client guessing one account as fast as it is answered is checked 9 times in the first minute, then once a minute."""
    clock, throttle, checked = fresh()
    attackers(throttle, clock, 1, 240, checked)
    assert checked[:9] == [0, 0, 0, 0, 1, 3, 7, 15, 31]
    assert perMinute(checked, 4) == [9, 1, 1, 1]


def test_parallelAttemptsQueueForSlots():
    """Twenty parallel connections get no more checks than one: each attempt reserves the next slot."""
    clock, throttle, checked = fresh()
    attackers(throttle, clock, 20, 240, checked)
    assert perMinute(checked, 4) == [9, 1, 1, 1]


def test_rightPasswordIsDelayedThenAcceptedAndForgivesThePair():
    """After failures the right password waits its slot, is checked and succeeds; the pair's count is then forgotten."""
    clock, throttle, checked = fresh()
    for _ in range(6):
        untilFired(clock, attempt(throttle, clock, checked))
    d = attempt(throttle, clock, checked, ok=True)
    assert not d.called
    assert untilFired(clock, d) == 3 + 4
    assert d.result == ALICE
    for _ in range(4):
        assert untilFired(clock, attempt(throttle, clock, checked)) == 7


def test_parallelRightPasswordsAreNotHeldUp():
    """Fifty logins at once of one user from one address, all right, are all answered within a few check times: a success forgives the slots the others took."""
    clock, throttle, checked = fresh()
    logins = [attempt(throttle, clock, checked, ok=True, takes=0.01) for _ in range(50)]
    assert max(untilFired(clock, d) for d in logins) < 0.2
    assert [d.result for d in logins] == [ALICE] * 50


def test_otherAddressesAndAccountsAreNotHeldUp():
    """While one address is slowed for one account, another address of that account and other accounts from that address are checked at once."""
    clock, throttle, checked = fresh()
    attackers(throttle, clock, 5, 120, checked)
    start = clock.seconds()
    assert untilFired(clock, attempt(throttle, clock, checked, address=AWAY, ok=True)) == start
    for n in range(60):
        assert untilFired(clock, attempt(throttle, clock, checked, account=f"s{n}", ok=True)) == start


def test_spentBudgetSlowsNewAddressesFromTheirFirstFailure():
    """After ten failures of an account, an address that has not failed is still checked at once, but waits after its first failure."""
    clock, throttle, checked = fresh()
    for n in range(10):
        untilFired(clock, attempt(throttle, clock, checked, address=f"10.0.1.{n}"))
    assert clock.seconds() == 0
    untilFired(clock, attempt(throttle, clock, checked, address=AWAY))
    assert untilFired(clock, attempt(throttle, clock, checked, address=AWAY)) == 1


def test_countsAreForgottenAfterTheForgetTime():
    """An hour after its last use a pair is forgotten: its free failures are back."""
    clock, throttle, checked = fresh()
    for _ in range(6):
        untilFired(clock, attempt(throttle, clock, checked))
    clock.advance(3600 + 4 + 1)
    start = clock.seconds()
    for _ in range(4):
        assert untilFired(clock, attempt(throttle, clock, checked)) == start


def test_memoryStoreStaysBounded():
    """A flood of distinct names and addresses never grows the memory store past its limit, and keeps the newest."""
    store = MemoryGuessStore(GuessRule(), maxEntries=100)
    for n in range(1000):
        store.reserve(f"p name{n}\0?", f"a name{n}", float(n))
    assert len(store) <= 100
    assert store._get("p name999\0?", 999.0).count == 1


def test_closeGivesUpWaitingChecksUnchecked():
    """Closing the throttle fails the checks still waiting with UnauthorizedLogin, without running them."""
    clock, throttle, checked = fresh(GuessRule(free=0))
    untilFired(clock, attempt(throttle, clock, checked))
    failures = []
    d = throttle.guard(ALICE, HOME, lambda: succeed(ALICE))
    d.addErrback(failures.append)
    throttle.close()
    assert failures and failures[0].check(UnauthorizedLogin)
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("given, key", [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    (None, "?"),
])
def test_addressKeyGroupsAnIPv6HostsSlash64(given, key):
    """IPv6 clients are told apart by /64 (one host may pick any address in it); IPv4-mapped ones count as IPv4."""
    assert addressKey(given) == key


def test_storesProvideTheInterface(tmp_path):
    """Both stores provide IGuessStore."""
    assert verifyObject(IGuessStore, MemoryGuessStore(GuessRule()))
    assert verifyObject(IGuessStore, SQLiteGuessStore(str(tmp_path / "t"), GuessRule(), FakeReactor()))


def test_sqliteStoresOnOneFileShareCounts(tmp_path):
    """Two SQLite stores on one file, as two processes would have, see each other's failures: the second is slowed by the first's."""
    path = str(tmp_path / "passwd.throttle")
    clock = FakeReactor()
    first = Throttle(SQLiteGuessStore(path, GuessRule(), clock), clock)
    second = Throttle(SQLiteGuessStore(path, GuessRule(), clock), clock)
    checked: list[float] = []
    for throttle in (first, second, first, second):
        assert untilFired(clock, attempt(throttle, clock, checked)) == 0
    assert untilFired(clock, attempt(second, clock, checked)) == 1
    assert untilFired(clock, attempt(first, clock, checked)) == 3
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_sqliteStoreExpiresAndStaysBounded(tmp_path):
    """The SQLite store drops entries past their time and, when over its limit, the ones nearest expiry."""
    path = str(tmp_path / "passwd.throttle")
    store = SQLiteGuessStore(path, GuessRule(forget=10), FakeReactor(), maxEntries=100)
    for n in range(300):
        store.reserve(f"p name{n}\0?", f"a name{n}", 0.0)
    with sqlite3.connect(path) as db:
        (size,) = db.execute("SELECT count(*) FROM guesses").fetchone()
    assert size <= 100
    store.reserve("p late\0?", "a late", 11.0)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT key FROM guesses").fetchall() == [("p late\0?",)]


def test_throttleBesideAPasswordFile(tmp_path):
    """A password file's throttle keeps its counts in PASSWD.throttle; with no file, in memory."""
    path = str(tmp_path / "passwd")
    assert isinstance(Throttle.besidePasswordFile(path, GuessRule(), FakeReactor()).store, SQLiteGuessStore)
    assert os.path.exists(path + ".throttle")
    assert isinstance(Throttle.besidePasswordFile(None, GuessRule(), FakeReactor()).store, MemoryGuessStore)


def test_unwritableThrottleFileFallsBackToMemory(tmp_path):
    """If PASSWD.throttle cannot be written, failures are still counted, in this process."""
    path = str(tmp_path / "missing-dir" / "passwd")
    assert isinstance(Throttle.besidePasswordFile(path, GuessRule(), FakeReactor()).store, MemoryGuessStore)


def test_checkerThrottlesByTheAddressTheCredentialsCarry():
    """The checker counts failures by account and the address in PasswordFrom: one address slowed, another not."""
    clock = FakeReactor()
    checker = PasswordChecker(users=[(ALICE, "right")], reactor=clock, rule=GuessRule(free=0))
    answered = []
    for address in (HOME, HOME, AWAY):
        d = checker.requestAvatarId(PasswordFrom(ALICE, "wrong", address))
        d.addErrback(lambda f: f.trap(UnauthorizedLogin))
        answered.append(untilFired(clock, d))
    assert answered == [0, 1, 1]
    assert untilFired(clock, checker.requestAvatarId(PasswordFrom(ALICE, "right", HOME))) == 3


def test_checkerWithoutAnAddressThrottlesTheAccount():
    """Credentials with no address are throttled as one unknown address, not let through."""
    clock = FakeReactor()
    checker = PasswordChecker(users=[(ALICE, "right")], reactor=clock, rule=GuessRule(free=0))
    for expected in (0, 1):
        d = checker.requestAvatarId(UsernamePassword(ALICE, "wrong"))
        d.addErrback(lambda f: f.trap(UnauthorizedLogin))
        assert untilFired(clock, d) == expected


class IThing(Interface):
    pass


def test_peerPortalGivesTwistedBuiltCredentialsTheAddress():
    """A connection's PeerPortal turns user-name-and-password credentials into PasswordFrom ones from its peer; others pass untouched."""
    seen = []

    @implementer(IRealm)
    class Recording:
        def requestAvatar(self, avatarId, mind, *interfaces):
            return IThing, avatarId, lambda: None

    class Checker(AllowAnonymousAccess):
        credentialInterfaces = (IUsernamePassword, *AllowAnonymousAccess.credentialInterfaces)

        def requestAvatarId(self, credentials):
            seen.append(credentials)
            return succeed("x")

    portal = PeerPortal.forPeer(Portal(Recording(), [Checker()]), IPv4Address("TCP", "192.0.2.9", 5))
    portal.login(UsernamePassword(b"a", b"b"), None, IThing)
    portal.login(Anonymous(), None, IThing)
    assert IClientAddress.providedBy(seen[0]) and seen[0].address == "192.0.2.9"
    assert (seen[0].username, seen[0].password) == (b"a", b"b")
    assert isinstance(seen[1], Anonymous)
    assert PeerPortal.forPeer(None, None) is None


def test_optionsGiveTheRuleAndRefuseNegatives():
    """The --guess-* options make the rule; a negative value is a usage error."""

    class Options(GuessOptionsMixin, usage.Options):
        pass

    options = Options()
    options.parseOptions(["--guess-free", "2", "--guess-max-delay", "10"])
    assert options.guessRule() == GuessRule(free=2, maxDelay=10)
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--guess-budget", "-1"])



def test_bftpLoginDeadlineWaitsForAHeldPassword(tmp_path):
    """A BFTP PASS the throttle holds past the login deadline is still checked and logs in: the deadline stands still meanwhile."""
    from tests.bftp_support import LOGIN, Raw, connected, makeFactory

    fake = FakeReactor()
    factory = makeFactory(tmp_path, fake, loginTimeout=5, maxLoginFailures=10)
    client, _, pump = connected(factory, fake, Raw)
    client.transport.write(b"HELLO BFTP/1\r\n" + b"USER alice\r\nPASS bad\r\n" * 6)
    pump.flush()
    while len(client.lines()) < 14:
        fake.advance(0.5)
        pump.flush()
    assert fake.seconds() == 3
    client.transport.write(LOGIN.split(b"\r\n", 1)[1])
    for _ in range(7):
        fake.advance(0.5)
        pump.flush()
    assert client.lines()[-1].startswith("331")
    fake.advance(0.5)
    pump.flush()
    assert client.lines()[-1].startswith("230")


def test_tetherHelloTimeoutDoesNotCutAHeldTokenCheck():
    """A tether hello whose token check the throttle holds longer than the hello timeout is welcomed once checked."""
    from tests.tether_support import connect, makeServer
    from tether.wire import Hello

    clock = Clock()
    server = makeServer(clock, helloTimeout=5)
    inner = server.checker

    class Held:
        credentialInterfaces = inner.credentialInterfaces

        def requestAvatarId(self, credentials):
            return deferLater(clock, 8, lambda: None).addCallback(lambda _: inner.requestAvatarId(credentials))

    server.checker = Held()
    link, ws = connect(server)
    link.textMessageReceived(Hello("lap", "secret", None, True).encode())
    clock.advance(7.9)
    assert ws.closed is None and ws.controls() == []
    clock.advance(0.2)
    assert ws.closed is None
    assert [m["type"] for m in ws.controls()] == ["welcome"]
