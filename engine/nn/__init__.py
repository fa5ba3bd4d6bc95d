"""The layered model: functions, layers, `Sequential`."""
