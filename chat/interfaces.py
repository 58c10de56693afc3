"""
The pluggable pieces of the chat server, and what each asks of the others.
"""

from zope.interface import Attribute, Interface


class IParticipant(Interface):
    """
    Someone connected to the chat: a course-protocol connection or an IRC
    one.  The rooms know participants only through this interface, so every
    front door shares the same rooms and nicknames.
    """

    nick = Attribute("The current nickname, C{str}, or L{None} before NICK.")
    user = Attribute("The user name (IRC USER; the nickname on the course door), C{str} or L{None}.")
    host = Attribute("The client's host as others see it in C{nick!user@host}, C{str}.")
    realname = Attribute("The real name (IRC USER), C{str} or L{None}.")
    account = Attribute("The account logged in to, C{str}, or L{None}.")
    away = Attribute("The away message, C{str}, or L{None} when not away.")
    online = Attribute("C{False} once the connection is lost or cut off.")
    peer = Attribute(
        "The client's address (an C{IAddress}), or L{None} where it is not"
        " known (a forked child's participant, seen from the parent)."
    )

    def deliver(event):
        """
        Send L{chat.rooms.Event} C{event} to this participant.  Must not
        block or raise: a participant that cannot keep up drops itself.
        """


class IChatServer(Interface):
    """
    The rooms and nicknames, as the front doors and their sessions use
    them: L{chat.rooms.ChatServer} in the process, or a forked child's
    stand-in for it (L{chat.hub.RemoteChatServer}).

    Refusals are L{chat.wire.ChatError}s, raised or (for the methods that
    return a L{Deferred}) failed with.  A room, as returned, has C{name},
    C{members} (folded nickname to a participant, or anything with a
    C{nick}), C{topic} (a L{chat.rooms.Topic} or L{None}) and C{history}
    (L{chat.rooms.Event}s, oldest first).
    """

    admission = Attribute(
        "The L{coursenet.admission.Admission} every front door of this server"
        " shares, or L{None} where another process admits the connections"
        " (a forked child's, whose parent caps the children)."
    )

    def register(who, nick, password=None):
        """
        Give L{IParticipant} C{who} the nickname C{nick}, or change it.

        @return: a L{Deferred} firing with the account name for a
            registered nickname whose password was right, else L{None}.
        """

    def quit(who, reason=""):
        """
        C{who} has gone: out of every room, its nickname released.
        """

    def join(who, name, key=None):
        """
        @return: a L{Deferred} firing with room C{name}, made if needed,
            once C{who} is in it (C{key} for a room with one, +k).
        """

    def part(who, name, reason=""):
        """
        Take C{who} out of room C{name}; return the room.
        """

    def say(who, name, text, notice=False, limit=None, tags=None, tagOnly=False):
        """
        Say C{text} in room C{name} to its other members; return the
        L{chat.rooms.Event}.  A C{notice} is not kept in the history;
        C{limit} is the longest text in bytes (L{None}: no limit but the
        line's); C{tags} are client-only tags to pass on, C{tagOnly} says
        there is no text (IRC TAGMSG).
        """

    def tell(who, nick, text, notice=False, limit=None, tags=None, tagOnly=False):
        """
        Send C{text} to C{nick} alone; return the L{chat.rooms.Event}.
        """

    def mode(who, name, changes):
        """
        Apply L{chat.moderation.Change}s to room C{name}, if C{who} is one
        of its operators; return C{(event or None, [refusals])}.
        """

    def kick(who, name, nick, reason=""):
        """
        Put C{nick} out of room C{name}; return the C{KICK} event.
        """

    def invite(who, nick, name):
        """
        Invite C{nick} to room C{name}; return the C{INVITE} event.
        """

    def setAway(who, text):
        """
        Mark C{who} away with C{text}, or back with L{None}.
        """

    def prefixes(room, who):
        """
        C{@} and/or C{+} for member C{who} of C{room}: operator, voice.
        """

    def setTopic(who, name, text):
        """
        Set (or with empty C{text} clear) the topic of room C{name}; return
        the L{chat.rooms.Event}.
        """

    def room(name):
        """
        Room C{name}, which must exist.
        """

    def listRooms():
        """
        The rooms someone is in or that have a topic, by name.
        """

    def roomsOf(who):
        """
        The rooms C{who} is in.
        """

    def find(nick):
        """
        The participant called C{nick} (anything with a C{nick}).
        """


class IFrontDoor(Interface):
    """
    What a L{chat.session.Session} needs of the protocol that owns it: the
    wire-specific half of a connection.
    """

    wire = Attribute(
        "The key under which events are encoded for this wire (C{str}):"
        " an event is encoded once per wire, whatever the recipients."
    )

    def encodeEvent(event):
        """
        L{chat.rooms.Event} C{event} as this wire sends it: C{bytes}.
        """

    def send(data):
        """
        Write C{data} to the client.
        """

    def sendPing(token):
        """
        Ask the client to answer with C{token}: it has been silent.
        """

    def close(why):
        """
        Tell the client C{why}, then close the connection.
        """


class IHistoryStore(Interface):
    """
    Where room history and topics survive a restart.
    """

    def load(room, count):
        """
        @return: a L{Deferred} firing with C{(topic, messages, settings)}:
            the room's topic (a L{chat.rooms.Topic} or L{None}), its last
            C{count} messages as L{chat.rooms.Event}s, oldest first, and its
            settings (L{chat.moderation.RoomSettings.toDict}) or L{None}.
        """

    def append(event):
        """
        Remember message C{event}.  Returns at once; the write happens
        later, off the reactor thread.
        """

    def setTopic(room, topic):
        """
        Remember C{room}'s L{chat.rooms.Topic}, or forget it for L{None}.
        """

    def setSettings(room, settings):
        """
        Remember C{room}'s modes, key, limit and bans: a JSON-able C{dict}
        (L{chat.moderation.RoomSettings.toDict}).
        """

    def close():
        """
        Write what is pending and release the store.

        @return: a L{Deferred} that fires when done.
        """
