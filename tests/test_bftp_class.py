"""
BFTP for a class (issue 10, docs/bftp.md "BFTP for a class"): admins,
students with homes and hand-in folders, the course area, anonymous and
public areas, quotas, unfinished uploads that expire, and the class
configuration file, each rule from both sides (allowed and refused), over
raw sockets and with the `bftp` command line; then the whole class against
one `twistd bftp`.

The in-process servers listen on 127.0.0.1 port 0 in the test's reactor;
the raw clients are blocking sockets driven from a thread
(L{deferToThread}), so the reactor serves them meanwhile.  Password hashes
are cheap (scrypt N=2^10): these tests measure rules, not scrypt.
"""

from __future__ import annotations

import calendar
import concurrent.futures
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from typing import NamedTuple

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python import usage

from bftp.auth import makePortal
from bftp.fs import PARTIAL_PREFIX
from bftp.policy import Policy
from bftp.protocol import BFTPFactory
from bftp.tap import Options
from coursenet.accounts import PasswordChecker, hashPassword, writePasswordFile
from coursenet.procs import freePort, stopProcess, waitForPort

BIN = os.path.dirname(sys.executable)
TEACHER = ("teacher", "teach-pw")
ALICE = ("alice", "alice-pw")
BOB = ("bob", "bob-pw")
PASSWORDS = dict([TEACHER, ALICE, BOB])
MAX_CHUNK = 1 << 20


# -- a raw client ------------------------------------------------------------


class Reply(NamedTuple):
    code: int
    text: str
    lines: list[str]


class Raw:
    """
    A blocking BFTP client that sends lines and reads replies: what a
    student with a socket and a terminal would do.
    """

    def __init__(self, port: int, user: str | None = None, password: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.rfile = self.sock.makefile("rb")
        assert self.read().code == 220
        assert self.cmd("HELLO BFTP/1").code == 200
        self.welcome: Reply | None = None
        if user is not None:
            assert self.cmd(f"USER {user}").code == 331
            self.welcome = self.cmd(f"PASS {password if password is not None else PASSWORDS.get(user, 'x')}")
            assert self.welcome.code == 230, self.welcome

    def read(self) -> Reply:
        lines = []
        while True:
            raw = self.rfile.readline()
            if not raw:
                raise ConnectionError("the server closed the connection")
            line = raw.decode("utf-8").rstrip("\r\n")
            if line[3:4] == "-":
                lines.append(line[4:])
                continue
            return Reply(int(line[:3]), line[4:], lines)

    def cmd(self, line: str) -> Reply:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")
        return self.read()

    def put(self, path: str, data: bytes, cut: int | None = None) -> Reply:
        """
        Upload C{data}; with C{cut}, send only that many bytes and close
        the connection, leaving an unfinished upload.
        """
        reply = self.cmd(f"PUT {path}")
        if reply.code != 350:
            return reply
        if cut is not None:
            self.sock.sendall(b"%08x" % cut + data[:cut])
            time.sleep(0.2)
            self.close()
            return reply
        for i in range(0, len(data), MAX_CHUNK):
            piece = data[i:i + MAX_CHUNK]
            self.sock.sendall(b"%08x" % len(piece) + piece)
        self.sock.sendall(b"00000000" + hashlib.sha256(data).hexdigest().encode() + b"\r\n")
        return self.read()

    def get(self, path: str) -> tuple[Reply, bytes]:
        reply = self.cmd(f"GET {path}")
        if reply.code != 150:
            return reply, b""
        data = bytearray()
        while True:
            n = int(self.rfile.read(8), 16)
            if n == 0:
                break
            data += self.rfile.read(n)
        return self.read(), bytes(data)

    def names(self, path: str) -> list[str]:
        reply = self.cmd(f"LIST {path}")
        assert reply.code == 212, reply
        return [urllib.parse.unquote(line.split(" ", 3)[3]) for line in reply.lines]

    def stat(self, path: str) -> dict[str, str]:
        reply = self.cmd(f"STAT {path}")
        assert reply.code == 211, reply
        return dict(part.split("=", 1) for part in reply.text.split())

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def bftp(*args: str, password: str | None = None) -> subprocess.CompletedProcess:
    """
    Run the `bftp` command; its password from BFTP_PASSWORD.
    """
    env = dict(os.environ)
    env.pop("BFTP_PASSWORD", None)
    if password is not None:
        env["BFTP_PASSWORD"] = password
    return subprocess.run(
        [os.path.join(BIN, "bftp"), "--no-progress", *args],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


# -- an in-process server ----------------------------------------------------


@pytest.fixture(scope="module")
def passwd(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("accounts") / "passwd")
    writePasswordFile(path, {name: hashPassword(pw, n=2**10) for name, pw in PASSWORDS.items()})
    return path


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    (r / "course").mkdir()
    (r / "course" / "syllabus.txt").write_bytes(b"week 1: sockets\n")
    (r / "course" / "public").mkdir()
    (r / "course" / "public" / "welcome.txt").write_bytes(b"welcome\n")
    (r / "staff").mkdir()
    (r / "staff" / "grades.csv").write_bytes(b"alice,A\n")
    return r


def classPolicy(tmp_path, config: str = "", **kwargs) -> Policy:
    """
    The policy of a class configuration file with C{config} in it
    (admins = ["teacher"] when it names none).
    """
    path = tmp_path / "class.toml"
    if "admins" not in config:
        config = 'admins = ["teacher"]\n' + config
    path.write_text(config)
    return Policy.fromConfig(str(path), **kwargs)


class Server:
    """
    A class-mode BFTP server in the test's reactor on 127.0.0.1.
    """

    def __init__(self, reactor, root, passwd: str, policy: Policy, anonymous: bool = True) -> None:
        self.reactor = reactor
        self.root = root
        self.checker = PasswordChecker(passwd, reactor=reactor)
        self.factory = BFTPFactory(
            str(root), makePortal(self.checker, anonymous=anonymous), anonymous=anonymous,
            reactor=reactor, loginDelay=0, maxPerAddress=200, policy=policy,
        )

    async def start(self) -> "Server":
        self.listening = await TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(self.factory)
        self.port = self.listening.getHost().port
        self.url = f"127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        await self.listening.stopListening()
        self.checker.throttle.close()
        await deferLater(self.reactor, 0.05, lambda: None)


def serving(policyOf=None, anonymous: bool = True):
    """
    Decorate a test body C{body(server)} (blocking: it runs in a thread)
    into a test that starts a server with the policy C{policyOf(tmp_path)}
    (the default class configuration with a public area) and stops it.
    """
    if policyOf is None:
        policyOf = lambda tmp_path: classPolicy(tmp_path, '[areas]\npublic = ["/course/public"]\n')  # noqa: E731

    def decorate(body):
        @pytest_twisted.ensureDeferred
        async def test(reactor, root, passwd, tmp_path):
            server = await Server(reactor, root, passwd, policyOf(tmp_path), anonymous).start()
            try:
                await deferToThread(body, server)
            finally:
                await server.stop()

        test.__name__ = body.__name__
        test.__doc__ = body.__doc__
        return test

    return decorate


# -- roles and homes ---------------------------------------------------------


@serving()
def test_loginRolesAndHomes(server):
    """A student's login says "(student, home /home/NAME)" and starts there, with home and hand-in folders made; an admin is told it is one; anonymous is read-only at /."""
    alice = Raw(server.port, *ALICE)
    assert alice.welcome.text == "logged in as alice (student, home /home/alice)"
    assert alice.cmd("PWD").text.split()[0] == "/home/alice"
    assert (server.root / "home" / "alice").is_dir() and (server.root / "handin" / "alice").is_dir()
    teacher = Raw(server.port, *TEACHER)
    assert teacher.welcome.text.startswith("logged in as teacher (admin, ")
    anonymous = Raw(server.port, "anonymous", "me@example.org")
    assert anonymous.welcome.text == "logged in as anonymous (read-only)"
    assert anonymous.cmd("PWD").text.split()[0] == "/"
    for c in (alice, teacher, anonymous):
        c.close()


# -- another student's files -------------------------------------------------


@serving()
def test_studentRefusedEverythingInAnothersFolders(server):
    """Every command of a student on another student's home or hand-in folder, existing or not, gets 534 that names the owner, and leaves the files as they were."""
    bob = Raw(server.port, *BOB)
    assert bob.put("/home/bob/notes.txt", b"bob's notes").code == 226
    assert bob.put("/handin/bob/hw1.txt", b"bob's homework").code == 226
    assert bob.cmd("MKDIR /home/bob/dir").code == 257
    bob.close()
    alice = Raw(server.port, *ALICE)
    for path in ["/home/bob/notes.txt", "/handin/bob/hw1.txt", "/home/bob/nothing", "/handin/bob/nothing",
                 "/home/bob/dir", "/home/bob", "/handin/bob", "/home/nobody/x"]:
        owner = path.split("/")[2]
        for command in ["STAT", "LIST", "CD", "GET", "HASH", "DELETE", "MKDIR", "RMDIR"]:
            reply = alice.cmd(f"{command} {path}")
            assert reply.code == 534, (command, path, reply)
            assert f"only {owner} and the admins may use it" in reply.text, reply
        reply = alice.put(path, b"overwritten")
        assert reply.code == 534 and f"only {owner}" in reply.text, (path, reply)
        for rename in [f"RENAME {path} /home/alice/stolen", f"RENAME /home/alice {path}"]:
            assert alice.cmd(rename).code == 534, rename
    # What exists and what does not get the same answer: a refusal tells nothing.
    assert alice.cmd("GET /home/bob/notes.txt").text.replace("notes.txt", "X") == \
        alice.cmd("GET /home/bob/nothing").text.replace("nothing", "X")
    assert (server.root / "home" / "bob" / "notes.txt").read_bytes() == b"bob's notes"
    assert (server.root / "handin" / "bob" / "hw1.txt").read_bytes() == b"bob's homework"
    assert not (server.root / "home" / "alice" / "stolen").exists()
    # Still connected and still able to use her own home.
    assert alice.cmd("NOOP").code == 200
    alice.close()


@serving()
def test_linksDoNotLeadIntoAnothersFolder(server):
    """A symbolic link in the course area to a student's home does not open it to other students (reads and writes through it get 534) while its owner and admins use it; a link in the public area does not open the course area to anonymous."""
    bob = Raw(server.port, *BOB)
    assert bob.put("/home/bob/notes.txt", b"bob's notes").code == 226
    os.symlink("../home/bob", server.root / "course" / "bobs")
    assert bob.get("/course/bobs/notes.txt")[1] == b"bob's notes"
    bob.close()
    alice = Raw(server.port, *ALICE)
    for command in ["GET /course/bobs/notes.txt", "STAT /course/bobs/notes.txt", "LIST /course/bobs",
                    "CD /course/bobs", "HASH /course/bobs/notes.txt"]:
        reply = alice.cmd(command)
        assert reply.code == 534 and "only bob and the admins" in reply.text, (command, reply)
    assert alice.put("/course/bobs/notes.txt", b"overwritten").code == 534
    alice.close()
    teacher = Raw(server.port, *TEACHER)
    assert teacher.get("/course/bobs/notes.txt")[1] == b"bob's notes"
    teacher.close()
    assert (server.root / "home" / "bob" / "notes.txt").read_bytes() == b"bob's notes"
    # Nor does a link in the public area open the rest to anonymous.
    os.symlink("../syllabus.txt", server.root / "course" / "public" / "sneaky.txt")
    anonymous = Raw(server.port, "anonymous", "guest")
    reply = anonymous.cmd("GET /course/public/sneaky.txt")
    assert reply.code == 534 and "not public" in reply.text, reply
    anonymous.close()


@serving()
def test_listingHidesLinksIntoAnothersFolder(server):
    """LIST does not show a student a link that leads into another student's folder."""
    Raw(server.port, *BOB).close()
    os.symlink("../home/bob", server.root / "course" / "bobs")
    alice = Raw(server.port, *ALICE)
    assert alice.names("/course") == ["public", "syllabus.txt"]


@serving()
def test_studentMayDoEverythingInOwnFolders(server):
    """A student puts, gets, hashes, stats, lists, renames, makes and removes in their own home and hand-in folder, and reads the course area."""
    alice = Raw(server.port, *ALICE)
    data = b"alice's essay\n"
    for top in ("/home/alice", "/handin/alice"):
        assert alice.put(f"{top}/essay.txt", data).code == 226
        reply, back = alice.get(f"{top}/essay.txt")
        assert reply.code == 226 and back == data
        assert alice.cmd(f"HASH {top}/essay.txt").text.split()[0] == hashlib.sha256(data).hexdigest()
        assert alice.stat(f"{top}/essay.txt")["size"] == str(len(data))
        assert alice.cmd(f"MKDIR {top}/drafts").code == 257
        assert alice.cmd(f"RENAME {top}/essay.txt {top}/drafts/v1.txt").code == 250
        assert alice.names(f"{top}/drafts") == ["v1.txt"]
        assert alice.cmd(f"CD {top}/drafts").code == 250
        assert alice.put("v2.txt", data).code == 226
        assert alice.cmd(f"DELETE {top}/drafts/v1.txt").code == 250
        assert alice.cmd("DELETE v2.txt").code == 250
        assert alice.cmd(f"RMDIR {top}/drafts").code == 250
    reply, back = alice.get("/course/syllabus.txt")
    assert reply.code == 226 and back == b"week 1: sockets\n"
    assert alice.names("/course") == ["public", "syllabus.txt"]
    assert alice.cmd("CD /course").code == 250
    alice.close()


@serving()
def test_studentWritesRefusedOutsideOwnFolders(server):
    """A student may not write in /course, /, /home or /handin themselves, nor remove or replace their own home or hand-in folder: 534 with the reason."""
    alice = Raw(server.port, *ALICE)
    refusals = {
        "PUT /course/syllabus.txt": "course area is written by admins only",
        "PUT /course/new.txt": "course area is written by admins only",
        "DELETE /course/syllabus.txt": "course area is written by admins only",
        "MKDIR /course/mine": "course area is written by admins only",
        "RENAME /course/syllabus.txt /home/alice/s.txt": "course area is written by admins only",
        "PUT /top.txt": "students may use only",
        "MKDIR /mine": "students may use only",
        "PUT /home/x.txt": "only x.txt and the admins",
        "MKDIR /handin/extra": "only extra and the admins",
        "RMDIR /home/alice": "your own folder cannot be removed or replaced",
        "RMDIR /handin/alice": "your own folder cannot be removed or replaced",
        "RENAME /home/alice /home/alice2": "your own folder cannot be removed or replaced",
        "RENAME /handin/alice /home/alice/h": "your own folder cannot be removed or replaced",
        "DELETE /home/alice": "your own folder cannot be removed or replaced",
        "RMDIR /home": "students may use only",
        "RMDIR /handin": "students may use only",
        "GET /staff/grades.csv": "students may use only",
        "LIST /staff": "students may use only",
    }
    for command, why in refusals.items():
        if command.startswith("PUT "):
            reply = alice.put(command[4:], b"data")
        else:
            reply = alice.cmd(command)
        assert reply.code == 534 and why in reply.text, (command, reply)
    assert (server.root / "course" / "syllabus.txt").read_bytes() == b"week 1: sockets\n"
    assert sorted(os.listdir(server.root / "course")) == ["public", "syllabus.txt"]
    assert (server.root / "home" / "alice").is_dir() and (server.root / "handin" / "alice").is_dir()
    alice.close()


@serving()
def test_listingsShowOnlyWhatTheStudentMayRead(server):
    """LIST of /, /home and /handin shows a student only their own entry and what they may read; an admin sees everything."""
    for user in (ALICE, BOB):
        Raw(server.port, *user).close()  # makes their folders
    alice = Raw(server.port, *ALICE)
    assert alice.names("/") == ["course", "handin", "home"]
    assert alice.names("/home") == ["alice"]
    assert alice.names("/handin") == ["alice"]
    teacher = Raw(server.port, *TEACHER)
    assert teacher.names("/") == ["course", "handin", "home", "staff"]
    assert teacher.names("/home") == ["alice", "bob", "teacher"]
    assert teacher.names("/handin") == ["alice", "bob"]
    alice.close()
    teacher.close()


# -- admins ----------------------------------------------------------------


@serving(lambda tmp_path: classPolicy(tmp_path, '[limits]\nquota = "10K"\n'))
def test_adminDoesEverythingEverywhere(server):
    """An admin reads, lists, overwrites and deletes in every student's home and hand-in folder, writes the course area and the root, and has no quota there."""
    bob = Raw(server.port, *BOB)
    assert bob.put("/handin/bob/hw1.txt", b"bob's homework").code == 226
    bob.close()
    teacher = Raw(server.port, *TEACHER)
    reply, back = teacher.get("/handin/bob/hw1.txt")
    assert reply.code == 226 and back == b"bob's homework"
    assert teacher.stat("/handin/bob/hw1.txt")["exists"] == "yes"
    assert teacher.put("/home/bob/feedback.txt", b"well done").code == 226
    assert teacher.cmd("DELETE /handin/bob/hw1.txt").code == 250
    big = os.urandom(300_000)
    assert teacher.put("/course/lecture.pdf", big).code == 226
    assert teacher.put("/home/teacher/backup.bin", big).code == 226
    assert teacher.put("/announcement.txt", b"exam on friday").code == 226
    assert teacher.cmd("MKDIR /course/week2").code == 257
    assert teacher.cmd("RENAME /course/week2 /course/week-2").code == 250
    assert (server.root / "course" / "lecture.pdf").read_bytes() == big
    assert (server.root / "home" / "bob" / "feedback.txt").read_bytes() == b"well done"
    assert not (server.root / "handin" / "bob" / "hw1.txt").exists()
    teacher.close()


# -- anonymous ---------------------------------------------------------------


@serving()
def test_anonymousSeesOnlyThePublicArea(server):
    """Anonymous lists only the public area and the folders above it, reads files there, and is refused everything else and every write with 534."""
    teacher = Raw(server.port, *TEACHER)
    teacher.close()
    anonymous = Raw(server.port, "anonymous", "guest")
    assert anonymous.names("/") == ["course"]
    assert anonymous.names("/course") == ["public"]
    assert anonymous.names("/course/public") == ["welcome.txt"]
    reply, back = anonymous.get("/course/public/welcome.txt")
    assert reply.code == 226 and back == b"welcome\n"
    for command in ["GET /course/syllabus.txt", "STAT /course/syllabus.txt", "LIST /home", "CD /home/teacher",
                    "LIST /staff", "HASH /staff/grades.csv", "STAT /handin"]:
        reply = anonymous.cmd(command)
        assert reply.code == 534 and "not public; log in to read it" in reply.text, (command, reply)
    for command in ["PUT /course/public/x.txt", "DELETE /course/public/welcome.txt", "MKDIR /course/public/d",
                    "RENAME /course/public/welcome.txt /course/public/w.txt"]:
        reply = anonymous.cmd(command)
        assert reply.code == 534 and "read-only" in reply.text, (command, reply)
    assert (server.root / "course" / "public" / "welcome.txt").read_bytes() == b"welcome\n"
    anonymous.close()


@serving(lambda tmp_path: classPolicy(tmp_path, '[areas]\npublic = ["/staff"]\n'))
def test_studentReadsWhatAnonymousMayRead(server):
    """A student can read a public area that anonymous can read."""
    anonymous = Raw(server.port, "anonymous", "guest")
    assert anonymous.get("/staff/grades.csv")[0].code == 226
    alice = Raw(server.port, *ALICE)
    assert alice.get("/staff/grades.csv")[0].code == 226


# -- STAT and unfinished uploads ----------------------------------------------


@serving()
def test_statShowsPartialOnlyToWhoMayWrite(server):
    """STAT shows an unfinished upload's size to its owner and admins only: another student gets 534 in a home, and partial=0 in the course area."""
    Raw(server.port, *ALICE).put("/home/alice/big.bin", os.urandom(5000), cut=3000)
    Raw(server.port, *TEACHER).put("/course/exam.pdf", os.urandom(5000), cut=4000)
    Raw(server.port, *TEACHER).put("/course/public/draft.txt", os.urandom(5000), cut=2000)
    time.sleep(0.2)
    alice = Raw(server.port, *ALICE)
    assert alice.stat("/home/alice/big.bin")["partial"] == "3000"
    assert alice.stat("/course/exam.pdf") == {"path": "/course/exam.pdf", "exists": "no", "partial": "0"}
    bob = Raw(server.port, *BOB)
    assert bob.cmd("STAT /home/alice/big.bin").code == 534
    teacher = Raw(server.port, *TEACHER)
    assert teacher.stat("/course/exam.pdf")["partial"] == "4000"
    assert teacher.stat("/home/alice/big.bin")["partial"] == "3000"
    anonymous = Raw(server.port, "anonymous", "guest")
    assert anonymous.cmd("STAT /course/exam.pdf").code == 534
    assert anonymous.stat("/course/public/draft.txt")["partial"] == "0"
    assert teacher.stat("/course/public/draft.txt")["partial"] == "2000"
    for c in (alice, bob, teacher, anonymous):
        c.close()


# -- the hand-in deadline ------------------------------------------------------


@serving(lambda tmp_path: classPolicy(tmp_path, '[areas]\nhandin-deadline = "2020-01-01T00:00:00Z"\n'))
def test_handinClosedAfterDeadline(server):
    """After the hand-in deadline a student can no longer put, delete or rename in their hand-in folder (534 naming the deadline), but still reads it and writes their home; admins still write there."""
    (server.root / "handin" / "alice").mkdir(parents=True)
    (server.root / "handin" / "alice" / "hw1.txt").write_bytes(b"on time")
    alice = Raw(server.port, *ALICE)
    for command in ["DELETE /handin/alice/hw1.txt", "MKDIR /handin/alice/late",
                    "RENAME /handin/alice/hw1.txt /handin/alice/hw2.txt"]:
        reply = alice.cmd(command)
        assert reply.code == 534 and "hand-in deadline (2020-01-01T00:00:00Z) has passed" in reply.text, (command, reply)
    reply = alice.put("/handin/alice/hw1.txt", b"late")
    assert reply.code == 534 and "deadline" in reply.text
    assert alice.get("/handin/alice/hw1.txt")[1] == b"on time"
    assert alice.put("/home/alice/late.txt", b"late").code == 226
    teacher = Raw(server.port, *TEACHER)
    assert teacher.put("/handin/alice/graded.txt", b"B+").code == 226
    alice.close()
    teacher.close()


@serving(lambda tmp_path: classPolicy(tmp_path, '[areas]\nhandin-deadline = "2099-01-01T00:00:00Z"\n'))
def test_handinOpenBeforeDeadline(server):
    """Before the hand-in deadline a student puts and overwrites their own hand-in."""
    alice = Raw(server.port, *ALICE)
    assert alice.put("/handin/alice/hw1.txt", b"first").code == 226
    assert alice.put("/handin/alice/hw1.txt", b"second").code == 226
    assert (server.root / "handin" / "alice" / "hw1.txt").read_bytes() == b"second"
    alice.close()


# -- quotas ------------------------------------------------------------------


@serving(lambda tmp_path: classPolicy(tmp_path, '[limits]\nquota = "200K"\n'))
def test_quotaCountsHomeHandinAndUnfinishedUploads(server):
    """A student's quota covers home, hand-in and unfinished uploads: an upload that would exceed it gets 552 and is not stored, a full quota gets 552 before 350, deleting frees room, admins are not limited."""
    quota = 200 * 1024
    alice = Raw(server.port, *ALICE)
    assert alice.put("/home/alice/a.bin", os.urandom(150_000)).code == 226
    reply = alice.put("/handin/alice/b.bin", os.urandom(100_000))
    assert reply.code == 552 and f"quota of {quota} bytes for alice exceeded" in reply.text, reply
    assert sorted(os.listdir(server.root / "handin" / "alice")) == []
    alice.put("/home/alice/p.bin", os.urandom(50_000), cut=40_000)
    alice = Raw(server.port, *ALICE)
    assert alice.stat("/home/alice/p.bin")["partial"] == "40000"
    # 150000 + 40000 unfinished + 20000 > 204800.
    reply = alice.put("/home/alice/c.bin", os.urandom(20_000))
    assert reply.code == 552 and "exceeded" in reply.text, reply
    assert not (server.root / "home" / "alice" / "c.bin").exists()
    # Exactly full fits.
    assert alice.put("/home/alice/d.bin", os.urandom(quota - 190_000)).code == 226
    reply = alice.cmd("PUT /home/alice/e.bin")
    assert reply.code == 552 and "DELETE something first" in reply.text, reply
    assert alice.cmd("NOOP").code == 200
    assert alice.cmd("DELETE /home/alice/a.bin").code == 250
    assert alice.put("/handin/alice/b.bin", os.urandom(100_000)).code == 226
    # Another student has their own quota.
    bob = Raw(server.port, *BOB)
    assert bob.put("/home/bob/a.bin", os.urandom(150_000)).code == 226
    teacher = Raw(server.port, *TEACHER)
    assert teacher.put("/course/video.bin", os.urandom(500_000)).code == 226
    assert teacher.put("/home/teacher/video.bin", os.urandom(500_000)).code == 226
    for c in (alice, bob, teacher):
        c.close()


@serving(lambda tmp_path: classPolicy(tmp_path, '[limits]\nquota = "200K"\n'))
def test_quotaWithTheCommandLine(server):
    """`bftp put` over the quota exits non-zero with the 552 quota message and stores nothing; after `bftp rm` the same put succeeds."""
    work = server.root.parent / "work"
    work.mkdir()
    (work / "big.bin").write_bytes(os.urandom(150_000))
    base = f"bftp://alice@{server.url}"
    done = bftp("put", str(work / "big.bin"), base + "/home/alice/one.bin", password=ALICE[1])
    assert done.returncode == 0, done.stderr
    done = bftp("put", str(work / "big.bin"), base + "/handin/alice/two.bin", password=ALICE[1])
    assert done.returncode != 0
    assert done.stderr.startswith("bftp: 552 ") and "quota" in done.stderr and "exceeded" in done.stderr, done.stderr
    assert not (server.root / "handin" / "alice" / "two.bin").exists()
    assert bftp("rm", base + "/home/alice/one.bin", password=ALICE[1]).returncode == 0
    done = bftp("put", str(work / "big.bin"), base + "/handin/alice/two.bin", password=ALICE[1])
    assert done.returncode == 0, done.stderr


# -- unfinished uploads expire ---------------------------------------------


def age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@serving(lambda tmp_path: classPolicy(tmp_path, '[limits]\npartial-max-age = "2"\n'))
def test_unfinishedUploadsExpireButNotRunningOnes(server):
    """Unfinished uploads untouched for partial-max-age are removed by the periodic sweep; the partial of an upload still running is kept and the upload completes."""
    alice = Raw(server.port, *ALICE)
    alice.put("/home/alice/old.bin", os.urandom(5000), cut=3000)
    old = server.root / "home" / "alice" / (PARTIAL_PREFIX + "old.bin")
    assert old.exists()
    running = Raw(server.port, *BOB)
    assert running.cmd("PUT /home/bob/live.bin").code == 350
    first = os.urandom(2000)
    running.sock.sendall(b"%08x" % len(first) + first)
    live = server.root / "home" / "bob" / (PARTIAL_PREFIX + "live.bin")
    for _ in range(50):
        if live.exists() and live.stat().st_size == 2000:
            break
        time.sleep(0.05)
    age(old, 60)
    age(live, 60)
    # The sweep runs every quarter of the age, at least once a second.
    deadline = time.monotonic() + 10
    while old.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not old.exists()
    assert live.exists()
    rest = os.urandom(1000)
    running.sock.sendall(b"%08x" % len(rest) + rest + b"00000000"
                         + hashlib.sha256(first + rest).hexdigest().encode() + b"\r\n")
    assert running.read().code == 226
    assert (server.root / "home" / "bob" / "live.bin").read_bytes() == first + rest
    assert Raw(server.port, *ALICE).stat("/home/alice/old.bin")["partial"] == "0"
    running.close()


@pytest_twisted.ensureDeferred
async def test_sweepAtStartAndDirectly(reactor, root, passwd, tmp_path):
    """A stale unfinished upload is gone right after the server starts, and sweep() removes only partials older than the age."""
    (root / "home" / "alice").mkdir(parents=True)
    stale = root / "home" / "alice" / (PARTIAL_PREFIX + "x.bin")
    stale.write_bytes(b"x" * 100)
    age(stale, 3 * 86400)
    fresh = root / "course" / (PARTIAL_PREFIX + "y.bin")
    fresh.write_bytes(b"y" * 100)
    age(fresh, 86400)
    server = await Server(reactor, root, passwd, classPolicy(tmp_path, '[limits]\npartial-max-age = "2d"\n')).start()
    try:
        for _ in range(50):
            if not stale.exists():
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert not stale.exists()
        assert fresh.exists()
        server.factory.policy.partialMaxAge = 3600
        assert await server.factory.sweeper.sweep() == 1
        assert not fresh.exists()
        assert await server.factory.sweeper.sweep() == 0
    finally:
        await server.stop()


# -- the command line --------------------------------------------------------


@serving()
def test_commandLineRulesBothSides(server):
    """With the `bftp` command, a student puts and lists their own hand-in, and get, stat, rm and put of another's are refused with one 534 line and a non-zero exit; the admin gets it; anonymous lists only the public area."""
    work = server.root.parent / "work"
    work.mkdir()
    (work / "hw.txt").write_bytes(b"bob's homework\n")
    bob = f"bftp://bob@{server.url}"
    alice = f"bftp://alice@{server.url}"
    done = bftp("put", str(work / "hw.txt"), bob + "/handin/bob/hw.txt", password=BOB[1])
    assert done.returncode == 0, done.stderr
    refused = [("get", alice + "/handin/bob/hw.txt", str(work / "stolen.txt")),
               ("stat", alice + "/handin/bob/hw.txt"),
               ("rm", alice + "/handin/bob/hw.txt"),
               ("put", str(work / "hw.txt"), alice + "/handin/bob/hw.txt")]
    allowed = [(("ls", bob + "/handin"), BOB[1]),
               (("get", f"bftp://teacher@{server.url}/handin/bob/hw.txt", str(work / "graded.txt")), TEACHER[1]),
               (("ls", f"bftp://{server.url}/"), None)]
    # One batch: each run mostly waits for Python to start.
    with concurrent.futures.ThreadPoolExecutor(len(refused) + len(allowed)) as pool:
        runs = list(pool.map(lambda job: bftp(*job[0], password=job[1]),
                             [(args, ALICE[1]) for args in refused] + allowed))
    for args, done in zip(refused, runs):
        assert done.returncode != 0, args
        assert done.stderr.startswith("bftp: 534 ") and done.stderr.count("\n") == 1, (args, done.stderr)
    assert not (work / "stolen.txt").exists()
    assert (server.root / "handin" / "bob" / "hw.txt").read_bytes() == b"bob's homework\n"
    bobList, teacherGet, anonymousList = runs[len(refused):]
    assert bobList.returncode == 0, bobList.stderr
    assert [line.split()[-1] for line in bobList.stdout.splitlines()] == ["bob"], bobList.stdout
    assert teacherGet.returncode == 0 and (work / "graded.txt").read_bytes() == b"bob's homework\n"
    assert anonymousList.returncode == 0, anonymousList.stderr
    assert [line.split()[-1] for line in anonymousList.stdout.splitlines()] == ["course"]


# -- the configuration file ----------------------------------------------------


@pytest.mark.parametrize("config, named", [
    ('admin = ["teacher"]\n', "admin"),
    ('[areas]\nhomework = "/hw"\n', "homework"),
    ('[limits]\nquotta = "1M"\n', "quotta"),
    ('[areas]\nhomes = "/"\n', "areas.homes"),
    ('[areas]\nhomes = "/a"\ncourse = "/a/b"\n', "/a/b"),
    ('[areas]\npublic = ["/"]\n', "areas.public"),
    ('this is not toml', "class.toml"),
])
def test_badConfigRefusedByTheOptions(tmp_path, config, named):
    """The twistd bftp options refuse a class configuration with an unknown key or a bad value, with a usage error that names the key."""
    path = tmp_path / "class.toml"
    path.write_text(config)
    with pytest.raises(usage.UsageError) as e:
        Options().parseOptions(["--root", str(tmp_path / "root"), "--anonymous", "--class-config", str(path)])
    assert named in str(e.value)


@pytest.mark.parametrize("config, named", [
    ('admin = ["teacher"]\n', "unknown key(s) admin;"),
    ('[areas]\nhomes = "/"\n', "areas.homes must be a directory below the root"),
])
def test_badConfigStopsTwistd(tmp_path, config, named):
    """`twistd bftp --class-config` with an unknown key or a bad value exits non-zero at once, its last line naming the key, with no traceback."""
    path = tmp_path / "class.toml"
    path.write_text(config)
    done = subprocess.run(
        [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "bftp", "--root", str(tmp_path / "root"), "--anonymous",
         "--class-config", str(path), "--listen", "tcp:0:interface=127.0.0.1"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    # twistd prints its usage, then the error, on standard output.
    assert named in output.strip().splitlines()[-1] and "Traceback" not in output, output[-2000:]


@pytest.mark.parametrize("config, named", [
    ('[limits]\nquota = "lots"\n', "quota"),
    ('[limits]\npartial-max-age = "forever"\n', "partial-max-age"),
    ('[areas]\nhandin-deadline = "tomorrow"\n', "handin-deadline"),
    ('[areas]\nhomes = 5\n', "homes"),
    ('admins = "teacher"\n', "admins"),
    ('[limits]\nquota = -5\n', "quota"),
])
def test_badValuesNameTheirKey(tmp_path, config, named):
    """A class configuration value of the wrong kind is refused at start with a message that names its key."""
    path = tmp_path / "class.toml"
    path.write_text(config)
    with pytest.raises(ValueError) as e:
        Policy.fromConfig(str(path))
    assert named in str(e.value)


def test_goodConfigRead(tmp_path):
    """Every key of a class configuration file is read: admins, areas, deadline, public areas, quota and expiry."""
    policy = classPolicy(tmp_path, (
        'admins = ["teacher", "ta"]\n'
        '[areas]\nhomes = "/users"\ncourse = "/cs101"\nhandin = "/submit"\n'
        'handin-deadline = "2026-12-24T23:59:00Z"\npublic = ["/cs101/pub", "/open"]\n'
        '[limits]\nquota = "200M"\npartial-max-age = "7d"\n'
    ))
    assert policy.classMode and policy.admins == {"teacher", "ta"}
    assert (policy.homes, policy.course, policy.handin) == ("/users", "/cs101", "/submit")
    assert policy.handinDeadline == calendar.timegm((2026, 12, 24, 23, 59, 0))
    assert policy.public == ("/cs101/pub", "/open")
    assert policy.quota == 200 * 1024 * 1024 and policy.partialMaxAge == 7 * 86400


# -- the whole class against one twistd ----------------------------------------


CLASS_SIZE = 30


def test_classScenario(tmp_path):
    """One `twistd bftp`: 30 students hand in at once and none can read, overwrite, delete, hash or STAT another's hand-in; the admin collects all 30 with `bftp collect`; the quota and expiry work in the same run; anonymous sees only the public area."""
    students = {f"s{n:02}": f"pw-{n:02}" for n in range(CLASS_SIZE)}
    names = sorted(students)
    passwd = str(tmp_path / "passwd")
    writePasswordFile(passwd, {name: hashPassword(pw, n=2**10) for name, pw in [*students.items(), TEACHER]})
    root = tmp_path / "root"
    (root / "course" / "public").mkdir(parents=True)
    (root / "course" / "public" / "welcome.txt").write_bytes(b"welcome\n")
    (root / "course" / "syllabus.txt").write_bytes(b"week 1\n")
    config = tmp_path / "class.toml"
    config.write_text(
        'admins = ["teacher"]\n'
        '[areas]\nhandin = "/handin"\nhandin-deadline = "2099-12-24T23:59:00Z"\npublic = ["/course/public"]\n'
        '[limits]\nquota = "64K"\npartial-max-age = "4"\n'
    )
    port = freePort()
    proc = subprocess.Popen(
        [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "--logfile", str(tmp_path / "twistd.log"), "bftp",
         "--root", str(root), "--passwd", passwd, "--anonymous", "--class-config", str(config),
         "--listen", f"tcp:{port}:interface=127.0.0.1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        waitForPort(port, proc)
        work = {name: os.urandom(20_000 + n) for n, name in enumerate(names)}
        start = threading.Barrier(CLASS_SIZE, timeout=30)

        def handIn(name: str) -> int:
            c = Raw(port, name, students[name])
            start.wait()
            code = c.put(f"/handin/{name}/report.bin", work[name]).code
            c.close()
            return code

        with concurrent.futures.ThreadPoolExecutor(CLASS_SIZE) as pool:
            assert list(pool.map(handIn, names)) == [226] * CLASS_SIZE

        def snoop(n: int) -> tuple[list[int], list[str], str]:
            me, other = names[n], names[(n + 1) % CLASS_SIZE]
            c = Raw(port, me, students[me])
            theirs = f"/handin/{other}/report.bin"
            codes = [
                c.get(theirs)[0].code,
                c.cmd(f"STAT {theirs}").code,
                c.cmd(f"HASH {theirs}").code,
                c.cmd(f"LIST /handin/{other}").code,
                c.put(theirs, b"overwritten").code,
                c.cmd(f"DELETE {theirs}").code,
                c.cmd(f"RENAME {theirs} /handin/{me}/copy.bin").code,
            ]
            seen = c.names("/handin")
            size = c.stat(f"/handin/{me}/report.bin")["size"]
            c.close()
            return codes, seen, size

        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            for n, (codes, seen, size) in enumerate(pool.map(snoop, range(CLASS_SIZE))):
                assert codes == [534] * 7, (names[n], codes)
                assert seen == [names[n]]
                assert size == str(len(work[names[n]]))

        collected = tmp_path / "collected"
        done = bftp("collect", f"bftp://teacher@127.0.0.1:{port}/handin", str(collected), password=TEACHER[1])
        assert done.returncode == 0, done.stderr
        assert f"collected {CLASS_SIZE} files" in done.stdout
        assert sorted(os.listdir(collected)) == names
        for name in names:
            assert os.listdir(collected / name) == ["report.bin"]
            assert (collected / name / "report.bin").read_bytes() == work[name]

        # The quota: 64 KiB for home and hand-in together.
        s05 = Raw(port, "s05", students["s05"])
        reply = s05.put("/home/s05/video.bin", os.urandom(50_000))
        assert reply.code == 552 and "quota of 65536 bytes for s05 exceeded" in reply.text, reply
        assert not (root / "home" / "s05" / "video.bin").exists()
        assert s05.put("/home/s05/notes.bin", os.urandom(40_000)).code == 226
        s05.close()

        # Expiry: an abandoned upload goes, a running one stays.
        Raw(port, "s00", students["s00"]).put("/home/s00/draft.bin", os.urandom(5000), cut=3000)
        abandoned = root / "home" / "s00" / (PARTIAL_PREFIX + "draft.bin")
        running = Raw(port, "s01", students["s01"])
        assert running.cmd("PUT /handin/s01/final.bin").code == 350
        first = os.urandom(3000)
        running.sock.sendall(b"%08x" % len(first) + first)
        live = root / "handin" / "s01" / (PARTIAL_PREFIX + "final.bin")
        deadline = time.monotonic() + 10
        while not (abandoned.exists() and live.exists() and live.stat().st_size == 3000) and time.monotonic() < deadline:
            time.sleep(0.05)
        age(abandoned, 60)
        age(live, 60)
        deadline = time.monotonic() + 10
        while abandoned.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not abandoned.exists()
        assert live.exists()
        rest = os.urandom(1000)
        running.sock.sendall(b"%08x" % len(rest) + rest + b"00000000"
                             + hashlib.sha256(first + rest).hexdigest().encode() + b"\r\n")
        assert running.read().code == 226
        running.close()
        assert (root / "handin" / "s01" / "final.bin").read_bytes() == first + rest

        anonymous = Raw(port, "anonymous", "guest")
        assert anonymous.names("/") == ["course"]
        assert anonymous.names("/course") == ["public"]
        assert anonymous.get("/course/public/welcome.txt")[1] == b"welcome\n"
        for command in ("LIST /handin", "GET /handin/s00/report.bin", "STAT /course/syllabus.txt"):
            assert anonymous.cmd(command).code == 534, command
        anonymous.close()
    finally:
        stopProcess(proc)
    log = (tmp_path / "twistd.log").read_text()
    assert all(pw not in log for pw in students.values())
