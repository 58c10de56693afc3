"""
The log line the SMTP server writes for each message it has made durable:
its Message-ID, its size, sender and recipients, and the time from the
final dot to the fsync'd commit.
"""

from __future__ import annotations

import smtplib

import pytest_twisted
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher

from tests.mail_support import DOMAIN, USER, inThread, message, startPostOffice
from tests.test_mail_smtp import connect, say


def deliveries(observer: EventLoggingObserver) -> list[dict]:
    return [e for e in observer if e.get("log_format", "").startswith("delivered ")]


def test_log_line_after_commit_with_time_to_durable():
    """The line comes once the commit fires, with the folded Message-ID, unstuffed size, envelope and the commit's delay on the session clock."""
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        p, t, store = connect()
        say(p, t, b"EHLO c\r\nMAIL FROM:<x@else.test>\r\nRCPT TO:<alice@example.test>\r\n"
                  b"RCPT TO:<bob@example.test>\r\nDATA\r\n")
        say(p, t, b"Subject: s\r\nMessage-ID:\r\n <folded@else.test>\r\n\r\n..dot\r\n.\r\n")
        p._clock.advance(0.25)
        store.deliveries[0].committed.callback("a")
        assert deliveries(observer) == []  # bob's copy is not durable yet
        store.deliveries[1].committed.callback("b")
    finally:
        globalLogPublisher.removeObserver(observer)
    [event] = deliveries(observer)
    assert formatEvent(event) == (
        "delivered <folded@else.test> (54 octets) from <x@else.test> to"
        " <alice@example.test>, <bob@example.test>: durable in 250.0 ms"
    )


def test_no_log_line_for_a_message_not_stored():
    """A message whose commit fails (451) or that is refused at the dot (552) is not logged as delivered; one without a Message-ID says so."""
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        p, t, store = connect(maxSize=1000)
        say(p, t, b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nhi\r\n.\r\n")
        store.deliveries[0].committed.errback(OSError("disk full"))
        say(p, t, b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + b"x" * 990 + b"\r\n" * 6 + b".\r\n")
        say(p, t, b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nhi\r\n.\r\n")
        store.deliveries[2].committed.callback("c")
    finally:
        globalLogPublisher.removeObserver(observer)
    assert [formatEvent(e) for e in deliveries(observer)] == [
        "delivered (no Message-ID) (4 octets) from <> to <alice@example.test>: durable in 0.0 ms"
    ]


@pytest_twisted.ensureDeferred
async def test_smtplib_delivery_logged(reactor, tmp_path):
    """A message smtplib sends is logged once, with its Message-ID, the size smtplib sent and both recipients, after it is in the Maildir."""
    office = await startPostOffice(reactor, str(tmp_path / "mail"))
    data = message("logged")
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)

    def send():
        with smtplib.SMTP("127.0.0.1", office.ports["smtp"], timeout=20) as s:
            return s.sendmail("bob@else.test", [f"{USER}@{DOMAIN}", f"bob@{DOMAIN}"], data)

    try:
        await inThread(send)
    finally:
        globalLogPublisher.removeObserver(observer)
        await office.stop()
    [event] = deliveries(observer)
    assert (event["messageId"], event["size"], event["sender"], event["recipients"]) == (
        "<logged@else.test>",
        len(data),
        "bob@else.test",
        f"<{USER}@{DOMAIN}>, <bob@{DOMAIN}>",
    )
    assert event["durable"] >= 0 and len(office.inbox()) == 1
