"""From a sensor, camera or agency system to a stored reading: decode, validate, write."""
