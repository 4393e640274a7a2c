"""``python -m fechatter_notify`` is the ``fechatter-notify`` command."""

from fechatter_notify.cli import main

raise SystemExit(main())
