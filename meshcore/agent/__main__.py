"""``python -m meshcore.agent``: the same as the ``meshcore-agent`` command."""

from meshcore.agent.daemon import main

raise SystemExit(main())
