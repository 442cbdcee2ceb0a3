"""OrderPulse streaming: order events to Delta Bronze, Silver and Gold KPIs."""
