"""Network helpers shared by drivers and connectors (they never import each other): the one place
that builds paho MQTT clients with TLS, and the persistent-session subscription record."""
