"""`side_network`: PAE proper, the server trains φ."""
