from twisted.application.service import ServiceMaker

chat = ServiceMaker("Chat server", "chat.tap", "Multi-room chat: course protocol and IRC front door", "chat")
