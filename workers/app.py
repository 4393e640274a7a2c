"""A module-level broker for dramatiq's own CLI: ``dramatiq workers.app -p 2 -t 8 -Q realtime``.

dramatiq's CLI imports a module and uses the global broker it finds, so this module (and only
this one) loads the settings at import time, from ``$NOTIFY_CONFIG`` / ``./notify.yml`` and the
environment, exactly as ``fechatter-notify`` does, and sets dramatiq's global broker.
``fechatter-notify worker`` does not import it: it passes settings explicitly. The README lists it
under "Running it"; tests/test_workers_app.py checks that dramatiq's CLI finds this broker.
"""

from __future__ import annotations

import dramatiq

from runtime import init_sentry
from settings import load_settings
from workers.actors import declare_actors
from workers.broker import WakeRedisBroker, build_broker
from workers.services import Services

settings = load_settings().settings
init_sentry(settings.sentry, "worker")  # before the broker: the integration hooks Broker.__init__
services = Services.open(settings)
broker: WakeRedisBroker = build_broker(settings, services.metrics)
actors = declare_actors(broker, services)
dramatiq.set_broker(broker)
