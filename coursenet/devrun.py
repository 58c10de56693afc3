"""
C{make run}: start every server of the suite on localhost with embedded
defaults, one C{twistd -n} process each, until Ctrl-C.

Data lives under C{./var}: a self-signed certificate for localhost
(C{var/tls}), a password file (C{var/passwd}) with a demo account (an admin
of the BFTP class) and a student account, and each service's files.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time

from coursenet.accounts import readPasswordFile, setPassword
from coursenet.logs import LOG_FILE_ENV
from coursenet.procs import waitForPort
from coursenet.tls import certificateNames, ensureDevCertificate, quoteEndpointValue, tlsListenString

VAR = "var"
DEMO_USER = "demo"
STUDENT_USER = "student"
WORKER_TOKEN = "compute-worker.token"


def services(var: str, cert: str, key: str, passwd: str) -> list[tuple[str, list[str], str]]:
    """
    The servers to start: C{(plugin, its options, how to reach it)}.
    """
    tether = [] if tetherUnavailable() else [
        (
            "tether",
            [
                "server", "--token-file", passwd, "--pool", "198.18.100.0/24", "--no-nat",
                "--listen", "tcp:8780:interface=127.0.0.1", "--tls-cert", cert, "--tls-key", key,
            ],
            f"tether wss://localhost:8780/tether/v1 (--cafile {cert}), pool 198.18.100.0/24, TUN tether0, no NAT",
        )
    ]
    return tether + [
        (
            "bftp",
            [
                "--root", os.path.join(var, "bftp"),
                "--passwd", passwd,
                "--admin", DEMO_USER,
                "--listen", "tcp:9021:interface=127.0.0.1",
                "--tls-cert", cert, "--tls-key", key, "--tls-port", "9022",
            ],
            f"bftp://{DEMO_USER}@localhost:9021/  and  bftps://{DEMO_USER}@localhost:9022/ (--cafile {cert});"
            f" class mode: {DEMO_USER} is an admin, {STUDENT_USER} a student (home /home/{STUDENT_USER},"
            f" hand-in /handin/{STUDENT_USER})",
        ),
        (
            "postoffice",
            [
                "--maildir", os.path.join(var, "mail"),
                "--passwd", passwd,
                "--domain", "localhost",
                "--tls-cert", cert, "--tls-key", key,
                "--smtp", "tcp:2525:interface=127.0.0.1",
                "--pop3", "tcp:1110:interface=127.0.0.1",
                "--imap", "tcp:1143:interface=127.0.0.1",
                "--smtp", tlsListenString(4465, cert, key, "127.0.0.1"),
                "--pop3", tlsListenString(1995, cert, key, "127.0.0.1"),
                "--imap", tlsListenString(1993, cert, key, "127.0.0.1"),
            ],
            f"SMTP localhost:2525 (STARTTLS; SMTPS 4465), POP3 1110 (STLS; 1995),"
            f" IMAP 1143 (STARTTLS; 1993) for {DEMO_USER}@localhost",
        ),
        (
            "grades",
            [
                "--public-demo",
                "--db", "sqlite:" + os.path.join(var, "grades", "grades.sqlite"),
                "--passwd", passwd,
                "--instructor", f"{DEMO_USER}:MATH,HISTORY,NETWORKS",
                "--student", f"{STUDENT_USER}:051883261",
                "--listen", "tcp:7070:interface=127.0.0.1",
                "--tls-cert", cert, "--tls-key", key, "--tls-port", "7071",
            ],
            f"grades localhost:7070 (public demo: printf 'HELLO\\nNAME 051883261\\nGRADE MATH\\nEND\\n'"
            f" | nc 127.0.0.1 7070; STARTTLS, TLS 7071); {DEMO_USER} teaches MATH HISTORY NETWORKS,"
            f" {STUDENT_USER} is 051883261",
        ),
        (
            "chat",
            [
                "--passwd", passwd,
                "--history-db", os.path.join(var, "chat", "history.sqlite"),
                "--listen", "tcp:6665:interface=127.0.0.1",
                "--tls-cert", cert, "--tls-key", key, "--tls-port", "6666",
                "--irc", "tcp:6667:interface=127.0.0.1",
            ],
            f"chat localhost:6665 (TLS 6666, --cafile {cert}), IRC localhost:6667",
        ),
        (
            "poker",
            [
                "--guests", "--passwd", passwd,
                "--db", os.path.join(var, "poker", "poker.sqlite"),
                "--listen", "tcp:7777:interface=127.0.0.1",
                "--tls-cert", cert, "--tls-key", key, "--tls-port", "7778",
            ],
            f"poker localhost:7777 (TLS 7778, --cafile {cert}): tables demo1 and demo2; guests welcome"
            f" (nc localhost 7777, then LOGIN yourname)",
        ),
        (
            "compute",
            [
                "--rpc", "tcp:8790:interface=127.0.0.1",
                "--workers", "tcp:8791:interface=127.0.0.1", "--tls-cert", cert, "--tls-key", key,
                "--passwd", passwd, "--db", os.path.join(var, "compute", "jobs.sqlite"),
                "--local-worker", f"--connect 127.0.0.1:8791 --cafile {cert}"
                f" --token-file {os.path.join(var, WORKER_TOKEN)} --procs 2",
            ],
            "compute XML-RPC http://localhost:8790/ (one local worker on 8791): python3 -c \"import time,"
            " xmlrpc.client as x; s=x.ServerProxy('http://127.0.0.1:8790/'); j=s.submit('leibniz', 4000000,"
            " 500000, 60); [time.sleep(0.2) for _ in iter(lambda: s.status(j)['state'] == 'done', True)];"
            " print(s.result(j))\"  or  .venv/bin/compute",
        ),
        (
            "swarm",
            [
                "--tracker", "tcp:6969:interface=127.0.0.1",
                "--peer", "tcp:6881:interface=127.0.0.1",
                "--seed", os.path.join(var, "swarm", "demo.bin"), "--demo-bytes", str(8 << 20),
            ],
            f"swarm tracker http://localhost:6969/announce seeding {var}/swarm/demo.bin (8 MiB) on 6881:"
            f" aria2c --enable-dht=false --bt-enable-lpd=false --enable-peer-exchange=false --seed-time=0"
            f" -d /tmp {var}/swarm/demo.bin.torrent  or  .venv/bin/swarm get {var}/swarm/demo.bin.torrent -o /tmp",
        ),
    ]


def workerToken(var: str, passwd: str) -> str:
    """
    Write the token file (C{NAME:TOKEN}, account C{worker}) of the compute
    worker C{make run} starts.
    """
    path = os.path.join(var, WORKER_TOKEN)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"worker:{demoPassword(var, passwd, 'worker')}\n")
    return path


def tetherUnavailable() -> str | None:
    """
    Why the tether server cannot start here, or L{None}: it needs root (for
    its TUN device) and /dev/net/tun.  C{make run} starts it with
    C{--no-nat}, so the host's forwarding stays untouched (its nftables
    table only keeps clients from the host's own services).
    """
    if os.geteuid() != 0:
        return "tether not started: its TUN device needs root (run make run as root)"
    if not os.path.exists("/dev/net/tun"):
        return "tether not started: no /dev/net/tun"
    return None


def demoPassword(var: str, passwd: str, user: str = DEMO_USER) -> str:
    """
    The password of a demo account: made on the first run, kept in
    C{var/USER-password} (mode 0600) so it can be printed every time.
    """
    path = os.path.join(var, f"{user}-password")
    if os.path.exists(path) and user in readPasswordFile(passwd):
        with open(path) as f:
            return f.read().strip()
    password = secrets.token_urlsafe(9)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    setPassword(passwd, user, password)
    return password


def listenPorts(args: list[str]) -> list[int]:
    """
    The TCP ports a server started with C{args} listens on: those of its
    C{tcp:} and C{ssl:} endpoint strings and of C{--tls-port}.
    """
    ports = [int(m) for a in args for m in re.findall(r"(?:^|=)(?:tcp|ssl):(\d+)", a)]
    ports += [int(v) for k, v in zip(args, args[1:]) if k == "--tls-port"]
    return ports


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def localAddresses() -> list[str]:
    """
    This machine's names and its addresses other than loopback, read from
    the system (no packet is sent): what students may type to reach it.
    """
    import json
    import socket

    names = [socket.gethostname(), socket.getfqdn()]
    try:
        out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, timeout=10).stdout
        for link in json.loads(out or "[]"):
            for a in link.get("addr_info", []):
                if a.get("scope") == "global":
                    names.append(a["local"])
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return list(dict.fromkeys(n for n in names if n and n != "localhost"))


def bindTo(args: list[str], host: str) -> list[str]:
    """
    C{args} with every listener bound to C{host} instead of 127.0.0.1.
    """
    value = quoteEndpointValue(host)
    return [a.replace("interface=127.0.0.1", f"interface={value}") for a in args]


def parseArgs(argv: list[str] | None):
    import argparse

    p = argparse.ArgumentParser(
        prog="make run", description="Start the course servers with embedded defaults until Ctrl-C."
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address every server listens on; 0.0.0.0 serves a classroom (make run HOST=0.0.0.0)")
    p.add_argument("--services", default="",
                   help='only these servers, e.g. "bftp chat" (make run SERVICES="bftp chat"); default: all')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parseArgs(argv)
    # A SIGTERM (from a supervisor, say) stops the servers as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    os.makedirs(VAR, exist_ok=True)
    classroom = options.host not in ("127.0.0.1", "localhost", "::1")
    if classroom:
        # Students reach the server by its name or address: the certificate
        # must carry those, so it is a separate one.
        cert, key = ensureDevCertificate(os.path.join(VAR, "tls-classroom"), extraNames=localAddresses())
    else:
        cert, key = ensureDevCertificate(os.path.join(VAR, "tls"))
    passwd = os.path.join(VAR, "passwd")
    password = demoPassword(VAR, passwd)
    studentPassword = demoPassword(VAR, passwd, STUDENT_USER)
    workerToken(VAR, passwd)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    procs = []
    print(f"demo account: user {DEMO_USER!r}, password {password!r} (also in {VAR}/{DEMO_USER}-password)")
    print(f"student account: user {STUDENT_USER!r}, password {studentPassword!r}"
          f" (also in {VAR}/{STUDENT_USER}-password; a BFTP student, a plain user elsewhere)")
    print(f"development certificate: {cert}, valid for {', '.join(certificateNames(cert))}")
    chosen = options.services.replace(",", " ").split()
    known = [name for name, _, _ in services(VAR, cert, key, passwd)] + (["tether"] if tetherUnavailable() else [])
    unknown = [name for name in chosen if name not in known]
    if unknown:
        print(f"make run: unknown service(s) {' '.join(unknown)}; choose from {' '.join(known)}", file=sys.stderr)
        return 2
    if tetherUnavailable() and (not chosen or "tether" in chosen):
        print(tetherUnavailable())
    shown = options.host
    if classroom:
        print(f"classroom mode: listening on {options.host}; anyone who can reach this machine can connect")
        if options.host in ("0.0.0.0", "::"):
            shown = (localAddresses() or [options.host])[0]
    summary = []
    try:
        for name, args, where in services(VAR, cert, key, passwd):
            if chosen and name not in chosen:
                continue
            if classroom:
                args, where = bindTo(args, options.host), where.replace("localhost", shown)
            log = os.path.join(VAR, f"{name}.log")
            # A log that rotates at 10 MB and keeps 5 old files (coursenet.logs).
            cmd = [twistd, "-n", "--pidfile=", "--logger", "coursenet.logs.bounded", name, *args]
            env = {**os.environ, LOG_FILE_ENV: log}
            # A session of its own: Ctrl-C reaches this process only, which
            # then stops each server once (two signals make twistd stop a
            # stopped reactor, and log a traceback).
            proc = subprocess.Popen(cmd, env=env, start_new_session=True)
            procs.append((name, proc))
            summary.append((name, proc, listenPorts(args), f"{name:10} {where}   log: {log}"))
        for name, proc, ports, line in summary:
            for port in ports:
                try:
                    waitForPort(port, proc, timeout=60)
                except RuntimeError:
                    print(f"{name} did not start (nothing listens on port {port}); see {VAR}/{name}.log")
                    return 1
        for *_, line in summary:
            print(line)
        print("Every server listens. Ctrl-C stops them all.")
        while True:
            for name, p in procs:
                if p.poll() is not None:
                    print(f"{name} exited with status {p.returncode}; see {VAR}/{name}.log")
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
