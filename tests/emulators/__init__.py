"""Local servers speaking cloud providers' wire protocols, so tests drive the official SDKs
over real sockets without accounts or internet."""
