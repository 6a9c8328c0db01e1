"""asyncio TCP transport: framed connections, the client channel, the server listener."""
