"""The field matrix: the middleware under real ASGI servers and common middleware stacks."""
