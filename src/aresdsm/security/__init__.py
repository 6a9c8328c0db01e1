"""Transport security and authorization (docs/protocol.md §13, docs/security.md).

Security lives in the transport and the server shell, never in the protocol rules: the pure
:class:`~aresdsm.protocol.server_core.ServerCore` does not know who asked.

* :mod:`.tls` -- mutual TLS 1.3 contexts and the identities certificates carry (server id,
  client name, role, serial);
* :mod:`.roles` -- the least privilege each request needs (read, write, admin);
* :mod:`.certs` -- a cluster CA and the certificates it issues (``ares cluster start``,
  ``ares certs``);
* :mod:`.audit` -- one line per admin operation (who, what, when).
"""
