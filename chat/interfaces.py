"""
The pluggable pieces of the chat server.
"""

from zope.interface import Attribute, Interface


class IParticipant(Interface):
    """
    Someone connected to the chat: a course-protocol connection or an IRC
    one.  The rooms know participants only through this interface, so every
    front door shares the same rooms and nicknames.
    """

    nick = Attribute("The current nickname, C{str}, or L{None} before NICK.")
    connected = Attribute("C{False} once the connection is lost.")

    def deliver(event):
        """
        Send L{chat.rooms.Event} C{event} to this participant.  Must not
        block or raise: a participant that cannot keep up drops itself.
        """


class IHistoryStore(Interface):
    """
    Where room history and topics survive a restart.
    """

    def load(room, count):
        """
        @return: a L{Deferred} firing with C{(topic, messages)}: the room's
            topic (a L{chat.rooms.Topic} or L{None}) and its last C{count}
            messages as L{chat.rooms.Event}s, oldest first.
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

    def close():
        """
        Write what is pending and release the store.

        @return: a L{Deferred} that fires when done.
        """
