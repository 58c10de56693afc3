"""
The class rules of bftp/policy.py as a pure table: who may read and write
which path, and what a class configuration may say (docs/bftp.md section
17).  Over sockets: tests/test_bftp_class.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bftp.auth import Account
from bftp.policy import READ, WRITE, Policy, parseAge, parseSize

TEACHER = Account("teacher")
ALICE = Account("alice")
ANON = Account("anonymous", readOnly=True)


def classPolicy(tmp_path, text: str = "", **kwargs) -> Policy:
    path = tmp_path / "class.toml"
    path.write_text(text)
    return Policy.fromConfig(str(path), **kwargs)


@pytest.mark.parametrize(
    "access, vpath, allowed",
    [
        (READ, "/", True),
        (WRITE, "/", False),
        (READ, "/home", True),
        (WRITE, "/home/x", False),
        (READ, "/home/alice", True),
        (WRITE, "/home/alice", False),
        (WRITE, "/home/alice/a.txt", True),
        (WRITE, "/home/alice/d/e/f", True),
        (READ, "/home/bob", False),
        (READ, "/home/bob/a.txt", False),
        (WRITE, "/home/alice2/a.txt", False),
        (READ, "/home/teacher/a", False),
        (READ, "/course/slides.pdf", True),
        (WRITE, "/course/slides.pdf", False),
        (WRITE, "/course", False),
        (READ, "/handin", True),
        (WRITE, "/handin/alice/hw1.py", True),
        (READ, "/handin/bob/hw1.py", False),
        (READ, "/elsewhere", False),
        (READ, "/coursework", False),
    ],
)
def test_studentTable(tmp_path, access, vpath, allowed):
    """A student reads /, its own folders and the course area, writes only inside its own folders, and nothing else."""
    policy = classPolicy(tmp_path, 'admins = ["teacher"]')
    assert (policy.refusal(ALICE, access, vpath) is None) == allowed


def test_adminsMayDoEverythingAndAnonymousOnlyReadsPublic(tmp_path):
    """Admins are never refused; anonymous reads public areas and the folders above them, and never writes."""
    policy = classPolicy(tmp_path, 'admins = ["teacher"]\n[areas]\npublic = ["/course/slides"]')
    assert all(policy.refusal(TEACHER, a, p) is None for a in (READ, WRITE) for p in ("/", "/home/alice/x", "/x"))
    assert policy.refusal(ANON, READ, "/course/slides/1.pdf") is None
    assert policy.refusal(ANON, READ, "/course") is None
    assert policy.refusal(ANON, READ, "/course/answers.pdf") is not None
    assert policy.refusal(ANON, WRITE, "/course/slides/1.pdf") is not None


def test_refusalDependsOnThePathOnly(tmp_path):
    """What a student is told about another's folder names the owner, never whether the file exists."""
    policy = classPolicy(tmp_path, 'admins = ["teacher"]')
    assert policy.refusal(ALICE, READ, "/home/bob/x") == policy.refusal(ALICE, READ, "/home/bob/y")
    assert policy.refusal(ALICE, READ, "/home/bob/x") == "only bob and the admins may use it"


def test_deadlineClosesHandinWritesOnly(tmp_path):
    """After the deadline a student can still read its hand-in and write its home, but not write the hand-in."""
    now = [1000.0]
    policy = classPolicy(
        tmp_path, 'admins = ["t"]\n[areas]\nhandin-deadline = "1970-01-01T00:20:00Z"', clock=lambda: now[0]
    )
    assert policy.refusal(ALICE, WRITE, "/handin/alice/a") is None
    now[0] = 1201.0
    assert "deadline (1970-01-01T00:20:00Z) has passed" in policy.refusal(ALICE, WRITE, "/handin/alice/a")
    assert policy.refusal(ALICE, READ, "/handin/alice/a") is None
    assert policy.refusal(ALICE, WRITE, "/home/alice/a") is None


@pytest.mark.parametrize("name", ["..", ".", "a/b", ".bftp-x", "x" * 256])
def test_namesThatCannotBeFoldersAreRefused(tmp_path, name):
    """A student whose name would make a folder outside its area (or an invalid one) gets no folders and no access."""
    policy = classPolicy(tmp_path, 'admins = ["t"]')
    account = Account(name)
    assert policy.folderRefusal(name) is not None
    assert policy.ownedBy(name) == []
    assert policy.home(account) == "/"
    assert policy.refusal(account, READ, "/course") is not None


@pytest.mark.parametrize(
    "text, message",
    [
        ("colour = 1", "unknown key(s) colour"),
        ("[areas]\nhomez = '/h'", "unknown key(s) homez"),
        ("[limits]\nquota = 'lots'", "not a size: 'lots'"),
        ("[limits]\npartial-max-age = '3 fortnights'", "not an age"),
        ("[areas]\nhandin-deadline = 'Friday'", "not a UTC time: 'Friday'"),
        ("[areas]\ncourse = '/'", "areas.course must be a directory below the root"),
        ("[areas]\ncourse = '/home/c'", "overlap"),
        ("admins = [", "class.toml"),
    ],
)
def test_badConfigurationsAreRefusedNamingTheKey(tmp_path, text, message):
    """A configuration with an unknown key or a bad value is refused with a message that names it."""
    with pytest.raises(ValueError) as e:
        classPolicy(tmp_path, text)
    assert message in str(e.value)


def test_commandLineValuesWinOverTheFile(tmp_path):
    """--quota and --partial-max-age take precedence over [limits]; --admin adds to admins."""
    policy = classPolicy(
        tmp_path, 'admins = ["a"]\n[limits]\nquota = "1M"\npartial-max-age = "1d"',
        admins=["b"], quota=5, partialMaxAge=7,
    )
    assert (policy.admins, policy.quota, policy.partialMaxAge) == (frozenset({"a", "b"}), 5, 7)


def test_sharedModeWithoutConfiguration():
    """With no class configuration every account but anonymous may write everywhere, and anonymous reads all."""
    policy = Policy.fromConfig(None)
    assert not policy.classMode
    assert policy.refusal(ALICE, WRITE, "/home/bob/x") is None
    assert policy.refusal(ANON, READ, "/anything") is None
    assert policy.refusal(ANON, WRITE, "/anything") is not None


@given(st.integers(0, 10**6), st.sampled_from(["", "K", "M", "G", "k", "MiB", "KB"]))
def test_parseSizeUnits(n, unit):
    """Sizes are bytes, or binary multiples with K/M/G (an optional 'iB' or 'B' after)."""
    factor = {"": 1, "K": 1024, "k": 1024, "M": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "KB": 1024}[unit]
    assert parseSize(f"{n}{unit}") == n * factor


@given(st.text(max_size=12))
def test_parseSizeAndAgeNeverCrash(text):
    """Any text is either a size/age or a ValueError that quotes it, never another exception."""
    for parse in (parseSize, parseAge):
        try:
            assert parse(text) >= 0
        except ValueError as e:
            assert repr(text) in str(e)
