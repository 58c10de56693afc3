from twisted.application.service import ServiceMaker

swarm = ServiceMaker("BitTorrent tracker and seeder", "swarm.tap", "BitTorrent HTTP tracker and seeding peer", "swarm")
