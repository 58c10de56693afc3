"""
Every implementer of the chat interfaces provides all of what its
interface declares (C{verifyObject}): the rooms in the process and a forked
child's stand-in for them, the participants the rooms see, the front doors
sessions talk through, the history stores and the account avatars.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.cred.portal import IRealm
from zope.interface.verify import verifyClass, verifyObject

from chat.auth import Account, ChatRealm, IChatAccount
from chat.hub import Link, RemoteChatServer, RemoteParticipant
from chat.interfaces import IChatServer, IFrontDoor, IHistoryStore, IParticipant
from chat.irc import IRCSession
from chat.protocol import ChatProtocol
from chat.session import Session
from chat.store import MemoryHistory, SQLiteHistory
from coursenet.blocking import BlockingReactor
from tests.chat_support import World


@pytest.fixture
def pair():
    """Both ends of a socket pair, closed after the test."""
    ends = socket.socketpair()
    yield ends
    for end in ends:
        end.close()


def test_chat_server_provides_IChatServer():
    """The rooms in the process have every method the front doors call, and the shared admission."""
    assert verifyObject(IChatServer, World().server)


def test_remote_chat_server_provides_IChatServer(pair):
    """A forked child's stand-in for the rooms has every method the front doors call."""
    assert verifyObject(IChatServer, RemoteChatServer(pair[0], BlockingReactor()))


@pytest.mark.parametrize("irc", [False, True], ids=["course", "irc"])
def test_doors_and_their_sessions(irc):
    """Each front door provides what its session needs (IFrontDoor), and its session is what the rooms need (IParticipant)."""
    peer = World().connect(irc=irc)
    assert isinstance(peer.proto, IRCSession if irc else ChatProtocol)
    assert verifyObject(IFrontDoor, peer.proto)
    assert isinstance(peer.proto.session, Session)
    assert verifyObject(IParticipant, peer.proto.session)


def test_remote_participant_provides_IParticipant(pair):
    """A forked child's connection, as the parent's rooms see it, is a participant like any other."""
    assert verifyObject(IParticipant, RemoteParticipant(Link(pair[0])))


@pytest_twisted.ensureDeferred
async def test_history_stores_provide_IHistoryStore(reactor, tmp_path):
    """The memory and SQLite history stores provide the whole store interface."""
    assert verifyObject(IHistoryStore, MemoryHistory())
    store = SQLiteHistory(str(tmp_path / "h.sqlite"), reactor=reactor)
    try:
        assert verifyObject(IHistoryStore, store)
    finally:
        await store.close()


def test_accounts_and_realm():
    """Registered nicknames' avatars and their realm provide their interfaces."""
    assert verifyObject(IChatAccount, Account("demo"))
    assert verifyClass(IRealm, ChatRealm)
