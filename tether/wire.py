"""
The tether wire format, pure: no transport, no reactor.

Data is one IPv4 packet per binary WebSocket message, or per text message
in base64 (RFC 4648, section 4) for relays that cannot pass binary; with
the C{gso} extension (L{tether.offload}) a virtio-net header comes first
and the packet may be a GSO super-packet.
Control messages are JSON objects in text messages; a text message is JSON
exactly when it starts with C{{}}, a character base64 never uses.
docs/tether.md is the specification this module follows.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import json
import re
from dataclasses import dataclass, field

from coursenet.errors import ReplyError

VERSION = 1
#: The path of the WebSocket endpoint, and the subprotocol a browser may offer.
PATH = "/tether/v1"
SUBPROTOCOL = "tether.v1"

#: The largest IP packet either side may send (the IPv4 total-length limit).
MAX_PACKET = 65535
#: The C{gso} extension (docs/tether.md, section 3.1) and the length of
#: the virtio-net header (C{struct virtio_net_hdr}, the TUN default) it
#: puts in front of each packet.
GSO = "gso"
VNET_HDR_LEN = 10
#: The largest message, in bytes or characters: a base64 packet, with its
#: virtio-net header when the C{gso} extension is on, at most.
MAX_MESSAGE = 4 * ((VNET_HDR_LEN + MAX_PACKET + 2) // 3)
#: The extensions this implementation knows (docs/tether.md, section 3.1).
EXTENSIONS = (GSO,)
#: The longest JSON control message, in characters.
MAX_CONTROL = 4096
MAX_NAME = 64
MAX_TOKEN = 1024

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*\Z")
_SESSION = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")


class Close(enum.IntEnum):
    """
    WebSocket close codes: RFC 6455's, and this protocol's in 4000-4999.
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    TOO_BIG = 1009
    BAD_MESSAGE = 4400
    AUTH = 4401
    PLAIN = 4403
    TIMEOUT = 4408
    REPLACED = 4409
    VERSION = 4426
    NAME_LIMIT = 4429
    UPSTREAM = 4502
    POOL = 4503


class ProtocolError(ReplyError):
    """
    A refusal: the close code and the reason that explains it.
    """

    @property
    def reason(self) -> str:
        return self.message


@dataclass(frozen=True)
class Hello:
    """
    The client's first message: who it is and how it wants data.
    """

    name: str
    token: str
    session: str | None = None
    binary: bool = True
    offload: tuple[str, ...] = ()

    def encode(self) -> str:
        message = {"type": "hello", "version": VERSION, "name": self.name,
                   "token": self.token, "binary": self.binary}
        if self.session:
            message["session"] = self.session
        if self.offload:
            message["offload"] = list(self.offload)
        return encodeControl(message)


@dataclass(frozen=True)
class Welcome:
    """
    The server's answer to a good hello: the client's address and link.
    """

    address: str
    prefix: int
    gateway: str
    mtu: int
    session: str
    routes: tuple[str, ...] = ("0.0.0.0/0",)
    keepalive: float = 15.0
    timeout: float = 45.0
    maxMessage: int = MAX_MESSAGE
    binary: bool = True
    offload: tuple[str, ...] = ()

    def encode(self) -> str:
        extra = {"offload": list(self.offload)} if self.offload else {}
        return encodeControl({
            "type": "welcome", "version": VERSION, "address": self.address,
            "prefix": self.prefix, "gateway": self.gateway, "mtu": self.mtu,
            "routes": list(self.routes), "session": self.session,
            "keepalive": self.keepalive, "timeout": self.timeout,
            "maxMessage": self.maxMessage, "binary": self.binary, **extra,
        })


def encodeControl(message: dict) -> str:
    """
    A control message as the text of a WebSocket message.
    """
    return json.dumps(message, separators=(",", ":"))


def errorMessage(code: int, reason: str) -> str:
    """
    The C{error} control message sent before closing with C{code}.
    """
    return encodeControl({"type": "error", "code": int(code), "reason": reason})


def encodePacketText(packet: bytes) -> str:
    """
    An IP packet as a base64 text message.
    """
    return base64.b64encode(packet).decode("ascii")


def decodeText(text: str) -> tuple[dict | None, bytes | None]:
    """
    Split a text message into C{(control, None)} or C{(None, packet)}.

    @raise ProtocolError: for malformed JSON or base64, or an oversized
        control message.
    """
    if text.startswith("{"):
        if len(text) > MAX_CONTROL:
            raise ProtocolError(Close.TOO_BIG, f"control message longer than {MAX_CONTROL} characters")
        try:
            message = json.loads(text)
        except ValueError:
            raise ProtocolError(Close.BAD_MESSAGE, "control message is not valid JSON")
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError(Close.BAD_MESSAGE, "control message needs a string \"type\"")
        return message, None
    try:
        return None, base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(Close.BAD_MESSAGE, "text data message is not base64 (RFC 4648)")


def _string(message: dict, key: str, limit: int, pattern: re.Pattern | None = None) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit or (
        pattern is not None and not pattern.match(value)
    ):
        raise ProtocolError(Close.BAD_MESSAGE, f"hello: bad or missing \"{key}\"")
    return value


def parseHello(message: dict) -> Hello:
    """
    Check a client's first control message.

    @raise ProtocolError: if it is not a valid hello of this version.
    """
    if message.get("type") != "hello":
        raise ProtocolError(Close.BAD_MESSAGE, "the first message must be a hello")
    version = message.get("version")
    # JSON true and 1.0 compare equal to 1 in Python; only an integer is a version.
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError(Close.BAD_MESSAGE, "hello: \"version\" must be an integer")
    if version != VERSION:
        raise ProtocolError(Close.VERSION, f"unsupported version {message.get('version')!r}; this server speaks {VERSION}")
    session = message.get("session")
    if session is not None:
        session = _string(message, "session", 64, _SESSION)
    binary = message.get("binary", True)
    if not isinstance(binary, bool):
        raise ProtocolError(Close.BAD_MESSAGE, "hello: \"binary\" must be true or false")
    return Hello(
        name=_string(message, "name", MAX_NAME, _NAME),
        token=_string(message, "token", MAX_TOKEN),
        session=session,
        binary=binary,
        offload=_offload(message, "hello"),
    )


def _offload(message: dict, kind: str) -> tuple[str, ...]:
    """
    The extensions named in C{message}'s C{offload} list that this side
    knows, in their order; unknown names are ignored.
    """
    names = message.get("offload", [])
    if not isinstance(names, list) or len(names) > 16 or not all(
        isinstance(n, str) and len(n) <= 32 for n in names
    ):
        raise ProtocolError(Close.BAD_MESSAGE, f"{kind}: \"offload\" must be a list of short strings")
    return tuple(n for n in EXTENSIONS if n in names)


def agree(offered: tuple[str, ...], supported: tuple[str, ...]) -> tuple[str, ...]:
    """
    The extensions a welcome accepts: those offered that this side supports.
    """
    return tuple(n for n in offered if n in supported)


def parseWelcome(message: dict) -> Welcome:
    """
    Check a server's welcome.

    @raise ProtocolError: if a field is missing or out of range.
    """
    try:
        address = ipaddress.IPv4Address(message["address"])
        gateway = ipaddress.IPv4Address(message["gateway"])
        prefix = int(message["prefix"])
        mtu = int(message["mtu"])
        routes = tuple(str(ipaddress.IPv4Network(r)) for r in message.get("routes", []))
        welcome = Welcome(
            address=str(address), prefix=prefix, gateway=str(gateway), mtu=mtu,
            session=str(message["session"]), routes=routes,
            keepalive=float(message.get("keepalive", 15.0)),
            timeout=float(message.get("timeout", 45.0)),
            maxMessage=int(message.get("maxMessage", MAX_MESSAGE)),
            binary=bool(message.get("binary", True)),
            offload=_offload(message, "welcome"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(Close.BAD_MESSAGE, f"bad welcome: {e}")
    if not (0 <= prefix <= 32 and 576 <= mtu <= MAX_PACKET and welcome.keepalive > 0
            and welcome.timeout > welcome.keepalive):
        raise ProtocolError(Close.BAD_MESSAGE, "bad welcome: prefix, mtu or timers out of range")
    return welcome


@dataclass
class Counters:
    """
    Packets and bytes one way and the other, and drops by reason.
    """

    packetsIn: int = 0
    bytesIn: int = 0
    packetsOut: int = 0
    bytesOut: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> bool:
        """
        Count a dropped packet.

        @return: whether this is the first drop for C{reason}.
        """
        count = self.drops.get(reason, 0)
        self.drops[reason] = count + 1
        return count == 0

    def summary(self) -> str:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.drops.items())) or "none"
        return (f"in {self.packetsIn} packets/{self.bytesIn} bytes,"
                f" out {self.packetsOut} packets/{self.bytesOut} bytes, drops: {drops}")


def ipv4Addresses(packet: bytes) -> tuple[bytes, bytes] | None:
    """
    The source and destination of an IPv4 packet, 4 bytes each, or L{None}
    if C{packet} is not a well-formed IPv4 header.
    """
    if len(packet) < 20 or packet[0] >> 4 != 4 or (packet[0] & 0x0F) < 5:
        return None
    if int.from_bytes(packet[2:4], "big") != len(packet):
        return None
    return packet[12:16], packet[16:20]
