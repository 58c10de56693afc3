"""
Post office benchmark: SMTP accept rate with Postfix's C{smtp-source}
against C{twistd postoffice} and against aiosmtpd with a handler that does
the same fsync'd Maildir delivery (L{mail.maildir.writeMessageFile}: file
fsync, rename into C{new/}, directory fsync, in a pool of 16 threads,
as ours), then POP3 fetch of 10,000 messages, and IMAP FETCH of the same
10,000 messages with the same client from C{twistd postoffice} and from
Debian's Dovecot (C{dovecot-imapd}).

Both SMTP servers run as separate processes on 127.0.0.1 and reply 250
only once the message is durable.  Run with C{make bench} or
C{python -m bench mail}.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

from coursenet.procs import freePort, stopProcess, waitForPort

SESSIONS = 16
MESSAGES = 2000
ROUNDS = 3
MESSAGE_SIZE = 1024
FETCH_MESSAGES = 10_000
#: Timed IMAP passes per server: each takes about a second.
IMAP_ROUNDS = 5
DOMAIN = "example.test"
USER, PASSWORD = "alice", "secret"
TIMEOUT = 300



def _count(maildir: str) -> int:
    return sum(len(os.listdir(os.path.join(maildir, sub))) for sub in ("new", "cur"))


def startOurs(root: str) -> tuple[subprocess.Popen, dict]:
    ports = {"smtp": freePort(), "pop3": freePort(), "imap": freePort()}
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    args = [twistd, "-n", "--pidfile=", "--logfile", os.path.join(root, "twistd.log"),
            "postoffice", "--maildir", os.path.join(root, "mail"), "--domain", DOMAIN,
            "--user", f"{USER}:{PASSWORD}"]
    for name, port in ports.items():
        args += [f"--{name}", f"tcp:{port}:interface=127.0.0.1"]
    proc = subprocess.Popen(args)
    for port in ports.values():
        waitForPort(port, proc)
    return proc, ports


def startAiosmtpd(root: str) -> tuple[subprocess.Popen, int]:
    port = freePort()
    proc = subprocess.Popen([sys.executable, "-m", "bench.mail_bench", "aiosmtpd", str(port), root])
    waitForPort(port, proc)
    return proc, port


def runAiosmtpd(port: int, root: str) -> None:
    """
    The peer: aiosmtpd whose handler delivers like ours, fsync'd before 250.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from aiosmtpd.controller import Controller

    from mail.maildir import ensureMaildir, writeMessageFile

    maildir = os.path.join(root, USER)
    ensureMaildir(maildir)
    pool = ThreadPoolExecutor(16)

    class MaildirHandler:
        async def handle_RCPT(self, server, session, envelope, address, options):
            if address.lower() != f"{USER}@{DOMAIN}":
                return "550 5.1.1 no such user here"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            data = (
                f"Return-Path: <{envelope.mail_from}>\r\n"
                f"Received: from {session.host_name} ([{session.peer[0]}])\r\n"
            ).encode() + envelope.original_content
            await asyncio.get_running_loop().run_in_executor(pool, writeMessageFile, maildir, data)
            return "250 2.0.0 Ok: message stored"

    controller = Controller(MaildirHandler(), hostname="127.0.0.1", port=port,
                            data_size_limit=25 * 1024 * 1024)
    controller.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


def smtpSource(port: int) -> float:
    """
    Messages per second C{smtp-source} gets accepted.
    """
    argv = ["smtp-source", "-s", str(SESSIONS), "-m", str(MESSAGES), "-l", str(MESSAGE_SIZE),
            "-f", "bob@else.test", "-t", f"{USER}@{DOMAIN}", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    subprocess.run(argv, check=True, timeout=TIMEOUT, capture_output=True)
    return MESSAGES / (time.perf_counter() - start)


def populate(maildir: str, n: int) -> None:
    """
    Put C{n} messages straight into C{new/} (setup only: no fsync).
    """
    from mail.maildir import ensureMaildir, uniqueName

    ensureMaildir(maildir)
    body = b"".join(b"line %d of a benchmark message, some text to fill it\n" % i for i in range(18))
    for i in range(n):
        data = b"From: bob@else.test\nSubject: bench %d\n\n" % i + body
        crlf = len(data) + data.count(b"\n")
        with open(os.path.join(maildir, "new", f"{uniqueName()},S={len(data)},W={crlf}"), "wb") as f:
            f.write(data)


def popFetch(port: int) -> tuple[float, int]:
    start = time.perf_counter()
    p = poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)
    p.user(USER)
    p.pass_(PASSWORD)
    count = p.stat()[0]
    for i in range(1, count + 1):
        p.retr(i)
    p.quit()
    return count / (time.perf_counter() - start), count


def servedOctets(directory: str) -> int:
    """
    The octets of the messages in C{directory} as IMAP serves them: their
    LF line ends as CRLF.
    """
    total = 0
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        total += len(data) + data.count(b"\n")
    return total


def imapFetch(port: int) -> tuple[float, int, int]:
    """
    One session: LOGIN, EXAMINE INBOX, C{FETCH 1:* (UID FLAGS
    BODY.PEEK[])}, LOGOUT.  Messages per second from connect to logout,
    the messages fetched and the octets of their bodies.
    """
    start = time.perf_counter()
    m = imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT)
    m.login(USER, PASSWORD)
    count = int(m.select("INBOX", readonly=True)[1][0])
    typ, data = m.fetch("1:*", "(UID FLAGS BODY.PEEK[])")
    bodies = [item[1] for item in data if isinstance(item, tuple)]
    m.logout()
    elapsed = time.perf_counter() - start
    if typ != "OK":
        raise RuntimeError(f"FETCH answered {typ} {data[-1]!r}")
    return len(bodies) / elapsed, len(bodies), sum(len(b) for b in bodies)


#: Dovecot as the reference IMAP server: the configuration
#: ../shared/conformance/imaptest/run.py uses for imaptest, on one port.
DOVECOT_CONF = """
base_dir = {d}/run
state_dir = {d}/state
instance_name = coursenet-bench-{pid}
{rootless}protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = {d}/dovecot.log
mail_location = maildir:{d}/mail/%u
first_valid_uid = {uid}
first_valid_gid = {gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
namespace inbox {{
  inbox = yes
  separator = .
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def dovecotBinary() -> str | None:
    found = shutil.which("dovecot") or "/usr/sbin/dovecot"
    return found if os.path.exists(found) and os.path.exists("/usr/lib/dovecot/imap") else None


def startDovecot(root: str) -> tuple[subprocess.Popen, int]:
    """
    Dovecot on 127.0.0.1 serving the Maildirs under C{root/mail}; as root
    its mail processes run as the C{mail} user, otherwise in Dovecot's
    rootless mode as this user.
    """
    port = freePort()
    os.chmod(root, 0o755)  # Dovecot's unprivileged processes traverse it
    for sub in ("run", "state"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    if os.geteuid() == 0:
        mail = pwd.getpwnam("mail")
        uid, gid, rootless = mail.pw_uid, mail.pw_gid, ""
        for top, dirs, files in os.walk(os.path.join(root, "mail")):
            for name in [top] + [os.path.join(top, n) for n in files]:
                os.chown(name, uid, gid)
    else:
        import grp

        uid, gid = os.getuid(), os.getgid()
        me = pwd.getpwuid(uid).pw_name
        rootless = (
            f"default_internal_user = {me}\ndefault_internal_group = {grp.getgrgid(gid).gr_name}\n"
            f"default_login_user = {me}\n"
            + "".join(f"service {svc} {{\n  chroot =\n}}\n" for svc in ("anvil", "imap-login"))
        )
    with open(os.path.join(root, "passwd"), "w") as f:
        f.write(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
    conf = os.path.join(root, "dovecot.conf")
    with open(conf, "w") as f:
        f.write(DOVECOT_CONF.format(d=root, port=port, uid=uid, gid=gid, pid=os.getpid(), rootless=rootless))
    with open(os.path.join(root, "dovecot.stdout"), "ab") as out:
        proc = subprocess.Popen([dovecotBinary() or "dovecot", "-F", "-c", conf], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    waitForPort(port, proc)
    return proc, port


def _dovecotVersion() -> str:
    try:
        out = subprocess.run([dovecotBinary() or "dovecot", "--version"], capture_output=True, timeout=10)
        return out.stdout.decode().split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def cpuSeconds(pid: int) -> float:
    """
    CPU time (user and system) used so far by process C{pid}, its live
    children and the children it has reaped: Dovecot serves each session
    from a child of its master process.
    """
    def times(stat: str) -> list[int]:
        # The fields after the command name, which is in parentheses.
        return [int(f) if f.lstrip("-").isdigit() else 0 for f in stat.rsplit(")", 1)[1].split()]

    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = times(f.read())
        except OSError:
            continue
        if int(entry) == pid:
            total += sum(fields[11:15])  # utime stime cutime cstime
        elif fields[1] == pid:
            total += sum(fields[11:13])
    return total / os.sysconf("SC_CLK_TCK")


def imapAgainstDovecot(work: str) -> tuple[dict[str, list[float]], dict[str, list[float]], list[str]]:
    """
    The same 10,000 messages in a Maildir for each server; one untimed
    pass each (both build their index of the folder), then L{IMAP_ROUNDS}
    alternating timed passes.  The rates of each server (C{"ours"},
    C{"dovecot"}), the server CPU milliseconds per 1000 messages of each
    pass (steadier than the rate on a loaded machine), and what went wrong
    (a count or a total size that differs from what was stored).
    """
    os.chmod(work, 0o755)  # Dovecot's unprivileged processes traverse it
    roots = {name: os.path.join(work, f"imap-{name}") for name in ("ours", "dovecot")}
    for root in roots.values():
        populate(os.path.join(root, "mail", USER), FETCH_MESSAGES)
    stored = servedOctets(os.path.join(roots["ours"], "mail", USER, "new"))
    ours, ports = startOurs(roots["ours"])
    try:
        dovecot, dovecotPort = startDovecot(roots["dovecot"])
    except BaseException:
        stopProcess(ours)
        raise
    rates: dict[str, list[float]] = {"ours": [], "dovecot": []}
    cpu: dict[str, list[float]] = {"ours": [], "dovecot": []}
    errors: list[str] = []
    try:
        servers = {"ours": (ports["imap"], ours.pid), "dovecot": (dovecotPort, dovecot.pid)}
        for round in range(IMAP_ROUNDS + 1):
            for name, (port, pid) in servers.items():
                before = cpuSeconds(pid)
                rate, count, octets = imapFetch(port)
                if name == "dovecot":
                    time.sleep(0.2)  # its session process exits and is reaped
                used = cpuSeconds(pid) - before
                if (count, octets) != (FETCH_MESSAGES, stored):
                    errors.append(f"{name}: {count} messages, {octets} octets"
                                  f" (stored {FETCH_MESSAGES}, {stored})")
                if round:
                    rates[name].append(rate)
                    cpu[name].append(used * 1000 * 1000 / count)
    finally:
        stopProcess(ours)
        stopProcess(dovecot)
    return rates, cpu, errors


def main() -> int:
    if shutil.which("smtp-source") is None:
        print("smtp-source missing: apt-get install postfix (see BENCH_APT_PACKAGES)")
        return 1
    if dovecotBinary() is None:
        print("dovecot missing: apt-get install dovecot-imapd (see BENCH_APT_PACKAGES)")
        return 1
    work = tempfile.mkdtemp(prefix="mail-bench-")
    try:
        # Alternate the two servers and keep the median of each: the disk
        # and the machine's other load drift during a run.
        oursRates, peerRates, stored = [], [], []
        for round in range(ROUNDS):
            root = os.path.join(work, f"ours{round}")
            ours, ports = startOurs(root)
            try:
                oursRates.append(smtpSource(ports["smtp"]))
                stored.append(_count(os.path.join(root, "mail", USER)))
            finally:
                stopProcess(ours)
            root = os.path.join(work, f"peer{round}")
            peer, peerPort = startAiosmtpd(root)
            try:
                peerRates.append(smtpSource(peerPort))
                stored.append(_count(os.path.join(root, USER)))
            finally:
                stopProcess(peer)
        oursRate = sorted(oursRates)[ROUNDS // 2]
        peerRate = sorted(peerRates)[ROUNDS // 2]

        fetchRoot = os.path.join(work, "fetch")
        populate(os.path.join(fetchRoot, "mail", USER), FETCH_MESSAGES)
        ours, ports = startOurs(fetchRoot)
        try:
            popRate, popCount = popFetch(ports["pop3"])
        finally:
            stopProcess(ours)
        imapRates, imapCPU, imapErrors = imapAgainstDovecot(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"SMTP accept, smtp-source -s {SESSIONS} -m {MESSAGES} -l {MESSAGE_SIZE}, fsync'd Maildir,")
    print(f"median of {ROUNDS} alternating rounds:")
    print(f"  twistd postoffice  {oursRate:8.0f} msg/s  (rounds: {', '.join(f'{r:.0f}' for r in oursRates)})")
    print(f"  aiosmtpd {_aiosmtpdVersion():8} {peerRate:8.0f} msg/s  (rounds: {', '.join(f'{r:.0f}' for r in peerRates)})")
    print(f"  ratio postoffice/aiosmtpd: {oursRate / peerRate:.2f}")
    print(f"POP3 RETR of {popCount} messages, one session: {popRate:8.0f} msg/s")
    imap = {name: sorted(rates)[IMAP_ROUNDS // 2] for name, rates in imapRates.items()}
    cpu = {name: sorted(ms)[IMAP_ROUNDS // 2] for name, ms in imapCPU.items()}
    print(f"IMAP FETCH 1:* (UID FLAGS BODY.PEEK[]) of {FETCH_MESSAGES} messages, imaplib, one session,")
    print(f"after one untimed pass each, median of {IMAP_ROUNDS} alternating rounds"
          " (server CPU ms per 1000 messages):")
    for name, label in (("ours", "twistd postoffice "), ("dovecot", f"dovecot {_dovecotVersion():9}")):
        print(f"  {label} {imap[name]:8.0f} msg/s {cpu[name]:6.0f} ms"
              f"  (rounds: {', '.join(f'{r:.0f}' for r in imapRates[name])} msg/s;"
              f" {', '.join(f'{c:.0f}' for c in imapCPU[name])} ms)")
    print(f"  ratio postoffice/dovecot: {imap['ours'] / imap['dovecot']:.2f} in msg/s,"
          f" {cpu['dovecot'] / cpu['ours']:.2f} in msg per CPU second; errors: {len(imapErrors)}")
    for error in imapErrors:
        print(f"  error: {error}")
    ok = all(n == MESSAGES for n in stored) and not imapErrors
    if not all(n == MESSAGES for n in stored):
        print(f"messages stored per round: {stored} (expected {MESSAGES} each)")
    return 0 if ok else 1


def _aiosmtpdVersion() -> str:
    try:
        import aiosmtpd

        return aiosmtpd.__version__
    except Exception:
        return "?"


if __name__ == "__main__":
    if sys.argv[1:2] == ["aiosmtpd"]:
        runAiosmtpd(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main())
