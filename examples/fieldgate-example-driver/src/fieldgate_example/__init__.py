"""An example third-party fieldgate package: two drivers and a profile pack."""
