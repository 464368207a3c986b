"""The ``ble`` driver: BLE advertisements (BTHome, Ruuvi, pvvx, iBeacon, Eddystone) via bleak."""
