"""The ``serial`` driver: framed binary and line protocols over UART/USB serial ports."""
