"""Real-browser helpers: a Chromium driver (DevTools protocol) and the pages it loads."""
