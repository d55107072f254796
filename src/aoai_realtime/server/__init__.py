"""The middle tier: serves the page, holds credentials, relays to the upstream, enforces policy."""
