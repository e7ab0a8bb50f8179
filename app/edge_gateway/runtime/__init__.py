"""Process wiring: the gateway, supervisor, control socket, CLIs."""
