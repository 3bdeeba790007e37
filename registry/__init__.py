"""Registry entries (one JSON file each); this file only makes the folder installable as dc_zoo.registry_data."""
