from twisted.application.service import ServiceMaker

tether = ServiceMaker("tether", "tether.tap", "IP over WebSocket: TUN client, browser relay, NAT server", "tether")
