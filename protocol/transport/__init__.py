"""Network transport of the PAE protocol: framing, TLS 1.3 identities, the asyncio server
and the device-side network channel."""
