"""Server-side adversaries. They read only the server's view (`protocol.server.transcript`)
and message types from `protocol`, never device or server internals."""
