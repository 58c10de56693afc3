from twisted.application.service import ServiceMaker

poker = ServiceMaker("Poker server", "poker.tap", "Multi-table no-limit Texas Hold'em (pokerkit rules)", "poker")
