"""Wire contracts of meshcore's HTTP APIs: the request and response types both sides share.

* :mod:`meshcore.api.operator`: the operator API (``meshctl``, the dashboard) served by
  :mod:`meshcore.controlplane.operator_api`.
* :mod:`meshcore.api.agent`: the agent API (VM agents) served by :mod:`meshcore.controlplane.agent_api`.

Each module is pure (dataclasses, standard library only) so a client imports it without the server's
dependencies; import the module you need (this package re-exports nothing, so importing one API's
types never loads the other's).
"""
