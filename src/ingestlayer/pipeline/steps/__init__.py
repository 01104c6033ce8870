"""Pipeline steps, registered by name: adding one is one module and one line in ``registry``."""
