"""CoAP driver for NB-IoT devices: polling, Observe, a push endpoint, SenML, DTLS-PSK."""
