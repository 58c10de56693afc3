"""
One clear line for every option mistake (issue 13): C{twistd chat},
C{twistd postoffice}, C{twistd tether server|client}, C{twistd grades},
C{twistd poker} and C{twistd compute} refuse a bad option before anything
listens.  Each case is parsed in this process and must
raise one C{UsageError} naming the option; a few run as real twistd
processes (at once, gathered once for the module) to show what a user
sees of any such error: a non-zero exit, no traceback, and the message as
the last line.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)

TETHER_SERVER = ["tether", "server", "--pool", "198.18.100.0/24", "--user", "a:b"]
TETHER_CLIENT = ["tether", "client", "--server", "wss://127.0.0.1:1/tether/v1", "--token-file", "token"]

CASES = {
    "chat-passwd": (["chat", "--passwd", "missing-file"], "--passwd missing-file: no such file"),
    "chat-listen": (["chat", "--listen", "tcp:notaport"], "--listen tcp:notaport: not a usable endpoint"),
    "chat-irc": (["chat", "--irc", "bogus:1"], "--irc bogus:1: not a usable endpoint"),
    "chat-tls-cert": (["chat", "--tls-cert", "junk", "--tls-key", "junk"], "--tls-cert junk --tls-key junk: not a PEM"),
    "chat-tls-port": (["chat", "--tls-port", "70000"], "--tls-port 70000: must be a TCP port"),
    "chat-history": (["chat", "--history", "-1"], "--history -1: must be at least 0"),
    "chat-idle": (["chat", "--idle-timeout", "0"], "--idle-timeout 0: must be more than 0 seconds"),
    "chat-rooms": (["chat", "--max-rooms", "0"], "--max-rooms 0: must be at least 1"),
    "chat-caps": (["chat", "--max-connections", "0"], "--max-connections 0: must be at least 1"),
    "postoffice-passwd": (["postoffice", "--passwd", "missing-file"], "--passwd missing-file: no such file"),
    "postoffice-smtp": (["postoffice", "--user", "a:b", "--smtp", "tcp:notaport"], "--smtp tcp:notaport: not a usable endpoint"),
    "postoffice-imap": (["postoffice", "--user", "a:b", "--imap", "bogus:1"], "--imap bogus:1: not a usable endpoint"),
    "postoffice-tls-key": (["postoffice", "--user", "a:b", "--tls-cert", "junk", "--tls-key", "nope.key"],
                           "--tls-key nope.key: no such file"),
    "postoffice-size": (["postoffice", "--user", "a:b", "--max-message-size", "-5"],
                        "--max-message-size -5: must be at least 1024"),
    "postoffice-maildir": (["postoffice", "--user", "a:b", "--maildir", "junk"], "--maildir junk: not a directory"),
    "postoffice-caps": (["postoffice", "--user", "a:b", "--max-per-address", "0"], "--max-per-address 0: must be at least 1"),
    "tether-server-token-file": (["tether", "server", "--pool", "198.18.100.0/24", "--token-file", "nope"],
                                 "--token-file nope: no such file; create it with: coursenet-passwd nope NAME"),
    "tether-server-token-form": (["tether", "server", "--pool", "198.18.100.0/24", "--token-file", "token"],
                                 "--token-file token: line 1 is not NAME:scrypt$... (a password file that"),
    "postoffice-passwd-form": (["postoffice", "--passwd", "token"], "--passwd token: line 1 is not NAME:scrypt$..."),
    "tether-server-listen": ([*TETHER_SERVER, "--listen", "tcp:notaport"], "--listen tcp:notaport: not a usable endpoint"),
    "tether-server-mtu": ([*TETHER_SERVER, "--mtu", "100"], "--mtu 100: must be at least 576"),
    "tether-server-grace": ([*TETHER_SERVER, "--grace", "-1"], "--grace -1.0: must be at least 0"),
    "tether-server-tun": ([*TETHER_SERVER, "--tun", "a-name-far-too-long"], "--tun 'a-name-far-too-long': not a device name"),
    "tether-server-tls": ([*TETHER_SERVER, "--tls-cert", "junk", "--tls-key", "junk"], "--tls-cert junk --tls-key junk: not a PEM"),
    "tether-client-token-file": (["tether", "client", "--server", "wss://127.0.0.1:1/tether/v1", "--token-file", "nope"],
                                 "--token-file nope: no such file"),
    "tether-client-token-form": (["tether", "client", "--server", "wss://127.0.0.1:1/tether/v1", "--token-file", "junk"],
                                 "--token-file junk: must hold one line NAME:TOKEN"),
    "tether-client-server": (["tether", "client", "--server", "https://x/", "--token-file", "token"],
                             "--server https://x/: not a ws:// or wss:// URL"),
    "tether-client-cafile": ([*TETHER_CLIENT, "--cafile", "missing.pem"], "--cafile missing.pem: no such file"),
    "tether-client-relay": ([*TETHER_CLIENT, "--relay", "tcp:notaport"], "--relay tcp:notaport: not a usable endpoint"),
    "grades-listen": (["grades", "--listen", "tcp:notaport"], "--listen tcp:notaport: not a usable endpoint"),
    "grades-passwd": (["grades", "--passwd", "missing-file"], "--passwd missing-file: no such file"),
    "grades-tls-port": (["grades", "--tls-port", "70000"], "--tls-port 70000: must be a TCP port"),
    "grades-max-import": (["grades", "--max-import", "0"], "--max-import 0: must be at least 1"),
    "grades-caps": (["grades", "--max-connections", "0"], "--max-connections 0: must be at least 1"),
    "poker-listen": (["poker", "--guests", "--listen", "tcp:notaport"], "--listen tcp:notaport: not a usable endpoint"),
    "poker-tls-cert": (["poker", "--guests", "--tls-cert", "junk", "--tls-key", "junk"], "--tls-cert junk --tls-key junk: not a PEM"),
    "poker-clock": (["poker", "--guests", "--clock", "0"], "--clock 0: must be more than 0 seconds"),
    "poker-tables": (["poker", "--guests", "--max-tables", "0"], "--max-tables 0: must be at least 1"),
    "poker-caps": (["poker", "--guests", "--max-per-address", "0"], "--max-per-address 0: must be at least 1"),
    "compute-rpc": (["compute", "--engine", "dask://127.0.0.1:1", "--rpc", "tcp:notaport"],
                    "--rpc tcp:notaport: not a usable endpoint"),
    "compute-workers": (["compute", "--user", "w:t", "--workers", "bogus:1"], "--workers bogus:1: not a usable endpoint"),
    "compute-passwd": (["compute", "--engine", "dask://127.0.0.1:1", "--passwd", "missing-file"],
                       "--passwd missing-file: no such file"),
    "compute-jobs": (["compute", "--engine", "dask://127.0.0.1:1", "--max-jobs", "0"], "--max-jobs 0: must be at least 1"),
    "compute-lease": (["compute", "--engine", "dask://127.0.0.1:1", "--lease-timeout", "0"],
                      "--lease-timeout 0: must be more than 0 seconds"),
}


#: The cases also run as twistd processes (one per plugin and kind).
THROUGH_TWISTD = ["chat-listen", "postoffice-smtp", "tether-server-token-file", "tether-client-token-file",
                  "grades-listen", "poker-listen", "compute-rpc"]


def options(args: list[str]):
    """
    The twistd Options of the plugin C{args} start with, and its arguments.
    """
    from chat.tap import Options as ChatOptions
    from mail.tap import Options as MailOptions
    from tether.tap import Options as TetherOptions

    from compute.tap import Options as ComputeOptions
    from grades.tap import Options as GradesOptions
    from poker.tap import Options as PokerOptions

    kinds = {"chat": ChatOptions, "postoffice": MailOptions, "tether": TetherOptions,
             "grades": GradesOptions, "poker": PokerOptions, "compute": ComputeOptions}
    return kinds[args[0]](), args[1:]


@pytest.mark.parametrize("case", sorted(CASES))
def test_badOptionRefusedNamingIt(tmp_path, monkeypatch, case):
    """A bad option is refused while parsing, before anything listens, with one line naming the option."""
    from twisted.python import usage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk").write_text("not pem\n")
    (tmp_path / "token").write_text("laptop:secret\n")
    args, expected = CASES[case]
    parser, rest = options(args)
    with pytest.raises(usage.UsageError) as refused:
        parser.parseOptions(rest)
    assert expected in str(refused.value) and "\n" not in str(refused.value)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """
    C{{case: (exit status, output)}} of the L{THROUGH_TWISTD} cases, run at once.
    """
    cwd = tmp_path_factory.mktemp("options")
    (cwd / "junk").write_text("not pem\n")
    (cwd / "token").write_text("laptop:secret\n")
    return runAll(cwd, {name: ["twistd", "-n", "--pidfile=", *CASES[name][0]] for name in THROUGH_TWISTD})


def runAll(cwd, commands: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    """
    Run the installed C{commands} (program name first) at once in C{cwd}
    with no input: C{{name: (exit status, output)}}.
    """
    procs = {
        name: subprocess.Popen([os.path.join(BIN, argv[0]), *argv[1:]], cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, argv in commands.items()
    }
    results = {}
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        results[name] = (proc.returncode, out)
    return results


@pytest.mark.parametrize("case", THROUGH_TWISTD)
def test_twistdShowsTheRefusalAsItsLastLine(outcomes, case):
    """twistd stopped by a bad option exits non-zero with no traceback, the refusal its last line."""
    code, out = outcomes[case]
    assert code != 0, out
    assert "Traceback" not in out, out
    assert CASES[case][1] in out.strip().splitlines()[-1], out[-2000:]


#: Console scripts given a bad argument: argv, and what the last line says.
CONSOLE_CASES = {
    "grades-server": (["grades", "localhost:notaport", "whoami"], "the server takes HOST:PORT"),
    "grades-cafile": (["grades", "--tls", "--cafile", "nope.pem", "localhost:7070", "whoami"], "--cafile nope.pem: no such file"),
    "compute-worker-cafile": (["compute-worker", "--connect", "127.0.0.1:1", "--token-file", "token", "--cafile", "nope.pem"],
                              "--cafile nope.pem: no such file"),
    "compute-worker-token": (["compute-worker", "--connect", "127.0.0.1:1", "--token-file", "nope"], "--token-file nope: No such file"),
    "poker-address": (["poker", "play", "localhost:notaport"], "HOST:PORT expected, not localhost:notaport"),
    "poker-cafile": (["poker", "play", "--tls", "--cafile", "nope.pem", "localhost:7777"], "--cafile nope.pem: no such file"),
    "chat-cafile": (["chat", "--tls", "--cafile", "nope.pem", "localhost", "ada"], "--cafile nope.pem: no such file"),
    "chat-port": (["chat", "--port", "0", "localhost", "ada"], "--port 0: must be a TCP port"),
}


@pytest.fixture(scope="module")
def consoleOutcomes(tmp_path_factory):
    """
    C{{case: (exit status, output)}} of the L{CONSOLE_CASES}, run at once.
    """
    cwd = tmp_path_factory.mktemp("console")
    (cwd / "token").write_text("laptop:secret\n")
    return runAll(cwd, {name: args for name, (args, _) in CONSOLE_CASES.items()})


@pytest.mark.parametrize("case", sorted(CONSOLE_CASES))
def test_consoleScriptRefusesABadArgumentAsArgparseDoes(consoleOutcomes, case):
    """A console script given a bad address or a missing file exits 2 before connecting, no traceback, the refusal its last line."""
    code, out = consoleOutcomes[case]
    assert code == 2, out
    assert "Traceback" not in out, out
    assert CONSOLE_CASES[case][1] in out.strip().splitlines()[-1], out[-2000:]
