"""fechatter-notify: the notification back end of the Fechatter chat system."""

__version__ = "0.1.0"
