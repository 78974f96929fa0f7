"""Resource kinds that are not generation policies, and the field types every kind shares.

* :mod:`.alert_rule`: AlertRule, read by alerting, never by xDS generation (its docstring says why it lives here);
* :mod:`._fields`: field schemas and rules several kinds use (durations, service hosts, header names,
  ``ROOT_NAMESPACE`` and the selector scope, unique names).

The kinds generation reads keep their schema in their policy folder, ``meshcore/policies/<kind>/schema.py``
(each defines ``KIND: KindSpec``); :mod:`meshcore.resources.registry` lists them all, in order.
"""
