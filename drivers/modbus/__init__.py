"""The ``modbus`` driver: Modbus TCP, RTU (RS-485) and RTU-over-TCP on pymodbus's client."""
