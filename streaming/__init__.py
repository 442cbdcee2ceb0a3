"""OrderPulse streaming: order events from Event Hubs (or a local source) to Delta Bronze, Silver, Gold."""
