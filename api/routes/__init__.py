"""The API's routes, one module per resource. Handlers parse, call the registry, and shape the reply."""
